"""The functions of main.py as the HTTP tests drive them, with types mypy can follow: the Flask
app functions-framework builds for one target, the JSON object a test client's answer holds, and
the reset of the functions' cached state between tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flask
import functions_framework
from werkzeug.test import TestResponse

from functions import handlers

MAIN = str(Path(__file__).resolve().parents[1] / "main.py")


def create_app(target: str) -> flask.Flask:
    """``functions_framework.create_app(target, "main.py")``, as the Flask app it is here.

    The framework returns a Starlette app for an ``@aio`` function; main.py has none, so
    anything but Flask is a mistake worth failing on.
    """
    # functions-framework ships py.typed but leaves create_app unannotated; this is the one call.
    app = functions_framework.create_app(target, MAIN)  # type: ignore[no-untyped-call]
    assert isinstance(app, flask.Flask), f"{target} is not served as a Flask app: {app!r}"
    return app


def forget_function_state() -> None:
    """Close the sink the functions' cached state holds, if any, and drop that state, so that
    the next app reads its configuration from the environment again."""
    if handlers.state.cache_info().currsize:
        sink = handlers.state()._sink
        if sink is not None:
            sink.close()
    handlers.state.cache_clear()


def json_body(response: TestResponse) -> dict[str, Any]:
    """The response's body, which must be a JSON object (werkzeug types it ``Any | None``)."""
    body = response.json
    assert isinstance(body, dict), (
        f"not a JSON object ({response.status_code}, {response.mimetype}): "
        f"{response.get_data(as_text=True)[:500]!r}"
    )
    return body
