"""Entry points of the Cloud Functions; each hands its request to functions.handlers.

Run one locally with `functions-framework --source=main.py --target=batch_import`.
"""

import flask
import functions_framework

from functions import handlers

handlers.prepare()


@functions_framework.http
def batch_import(request: flask.Request) -> flask.Response:
    """POST a batch of engagement events; they are validated, converted to UTC and stored."""
    return handlers.batch_import(request)


@functions_framework.http
def convert_timestamps(request: flask.Request) -> flask.Response:
    """Convert timestamps to UTC with the same rules batch_import applies."""
    return handlers.convert_timestamps(request)


@functions_framework.http
def verify_service_jwt(request: flask.Request) -> flask.Response:
    """Check that the request's bearer token is a valid service_role credential."""
    return handlers.verify_service_jwt(request)
