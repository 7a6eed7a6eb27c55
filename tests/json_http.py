"""The two halves of a JSON exchange that every local stand-in server of the tests shares
(PostgREST, the JWKS endpoint): reading the request's JSON body and writing a JSON answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any


def read_body(handler: BaseHTTPRequestHandler) -> Any:
    """The request's JSON body, or None when it has none."""
    length = int(handler.headers.get("Content-Length") or 0)
    return json.loads(handler.rfile.read(length) or b"null")


def answer(
    handler: BaseHTTPRequestHandler,
    status: int,
    payload: bytes,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Send ``payload`` (JSON, already encoded) with ``status`` and any extra ``headers``."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=utf-8")
    handler.send_header("Content-Length", str(len(payload)))
    for name, value in (headers or {}).items():
        handler.send_header(name, value)
    handler.end_headers()
    handler.wfile.write(payload)
