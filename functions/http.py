"""HTTP in one place: reading request bodies within limits, and errors as JSON responses.

Every error answer is `{"error": "<code>", "message": "<sentence>", "request_id": "..."}` with
the status below; this table is the only place an exception becomes a status code.

    MalformedRequest 400   MethodNotAllowed 405 (Allow)   PayloadTooLarge 413
    UnsupportedMediaType 415   AuthError 401   NotServiceRole 403   TimestampError 422
    RateLimited 429 (Retry-After)   StoreUnavailable 503 (Retry-After)   StoreError 502
    ConfigError 500 and anything unexpected 500 (never caused by input; logged)
"""

from __future__ import annotations

import json
import math
import re
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import flask

from functions.errors import (
    AuthError,
    EngagementError,
    MalformedRequest,
    MethodNotAllowed,
    NotServiceRole,
    PayloadTooLarge,
    RateLimited,
    RequestError,
    StoreError,
    StoreUnavailable,
    TimestampError,
    UnsupportedMediaType,
)

REQUEST_ID_HEADER = "X-Request-Id"
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
_READ_CHUNK = 64 * 1024
_DISCARD_LIMIT = 64 * 1024 * 1024


def request_id_for(request: flask.Request) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _CALLER_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def require_method(request: flask.Request, *allowed: str) -> None:
    if request.method not in allowed:
        raise MethodNotAllowed(
            f"{request.method} is not supported here; use {' or '.join(allowed)}",
            allowed=allowed,
        )


def read_json(request: flask.Request, *, max_body_bytes: int) -> Any:
    """The request body as JSON, after checking type, encoding and size.

    The size limit applies to the decompressed body, and decompression stops as soon as it is
    passed, so a small gzip bomb costs no more than `max_body_bytes` of memory.
    """
    mimetype = (request.mimetype or "").lower()
    if mimetype != "application/json":
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, not {mimetype or 'missing'}"[:120]
        )
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("the body must be UTF-8 encoded JSON")
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType(
            "Content-Encoding must be gzip or absent"
            + (f", not {encoding}" if len(encoding) <= 32 else "")
        )
    # A gzip body that decompresses to at most the limit is itself at most slightly larger
    # (stored blocks add 5 bytes per 64 KiB, the header and trailer 18), so the compressed read
    # is capped just above the limit: memory stays near max_body_bytes however large a body is.
    ceiling = max_body_bytes if encoding == "identity" else compressed_ceiling(max_body_bytes)
    declared = request.content_length
    if declared is not None and declared > ceiling:
        what = "body" if encoding == "identity" else "compressed body"
        _discard(request.stream)
        raise PayloadTooLarge(f"the {what} is {declared} bytes; the limit is {ceiling}")

    raw = _read_limited(request, ceiling)
    body = _gunzip_limited(raw, max_body_bytes) if encoding == "gzip" else raw
    if not body.strip():
        raise MalformedRequest("the body is empty; send a JSON document")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRequest(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            object_pairs_hook=_refuse_duplicate_keys,
        )
    except json.JSONDecodeError as exc:
        raise MalformedRequest(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError:
        # Python refuses integers of more than 4300 digits (sys.int_info.str_digits_check_threshold)
        raise MalformedRequest("a number in the body has too many digits") from None
    except RecursionError:
        raise MalformedRequest("the body is nested too deeply") from None


def compressed_ceiling(max_body_bytes: int) -> int:
    """The largest gzip body read for a decompressed limit of ``max_body_bytes``."""
    return max_body_bytes + max_body_bytes // 4096 + 1024


def body_at_most(request: flask.Request, limit: int) -> bool:
    """Whether the request's body is known to be at most ``limit`` bytes once decoded: it was
    sent uncompressed with a Content-Length of at most ``limit``. Then no part of it can be
    larger either."""
    body_size = request.content_length or 0
    identity = request.headers.get("Content-Encoding", "identity").lower() == "identity"
    return identity and 0 < body_size <= limit


def _read_limited(request: flask.Request, ceiling: int) -> bytes:
    stream = request.stream
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(_READ_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > ceiling:
            _discard(stream)
            raise PayloadTooLarge(f"the body is over the limit of {ceiling} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _discard(stream: Any) -> None:
    """Read what is left of a refused body and drop it.

    functions-framework reads the whole request after every response (``request.get_data()``,
    so that clients still sending do not see the connection reset) and keeps it in memory;
    reading it here first, chunk by chunk, leaves nothing for it to keep. Cloud Functions
    refuses requests over 32 MiB, so this ends; the cap is for anything else in front.
    """
    left = _DISCARD_LIMIT
    while left > 0:
        chunk = stream.read(min(_READ_CHUNK, left))
        if not chunk:
            return
        left -= len(chunk)


def _gunzip_limited(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the body decompresses to more than the limit of {limit} bytes")
        out += inflater.flush()
    except zlib.error:
        raise MalformedRequest("the body is not valid gzip data") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"the body decompresses to more than the limit of {limit} bytes")
    if not inflater.eof:
        raise MalformedRequest("the gzip data is truncated")
    if inflater.unused_data:
        raise MalformedRequest("there is data after the end of the gzip stream")
    return out


def _refuse_constant(name: str) -> Any:
    raise MalformedRequest(f"{name} is not valid JSON; send numbers as finite values")


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        raise MalformedRequest("a number in the body is too large for a double (over 1.8e308)")
    return number


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedRequest("an object in the body repeats a key")
    return result


def json_response(
    body: Mapping[str, Any],
    status: int,
    request_id: str,
    headers: Mapping[str, str] | None = None,
) -> flask.Response:
    payload = {**body, "request_id": request_id}
    response = flask.Response(
        json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
        status=status,
        mimetype="application/json",
    )
    response.headers[REQUEST_ID_HEADER] = request_id
    response.headers["Cache-Control"] = "no-store"
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def status_for(error: EngagementError) -> int:
    # Order matters: subclasses before their bases.
    table: tuple[tuple[type[EngagementError], int], ...] = (
        (MalformedRequest, 400),
        (MethodNotAllowed, 405),
        (PayloadTooLarge, 413),
        (UnsupportedMediaType, 415),
        (RequestError, 400),
        (NotServiceRole, 403),
        (AuthError, 401),
        (TimestampError, 422),
        (RateLimited, 429),
        (StoreUnavailable, 503),
        (StoreError, 502),
    )
    for kind, status in table:
        if isinstance(error, kind):
            return status
    return 500


def error_response(error: EngagementError, request_id: str) -> flask.Response:
    status = status_for(error)
    body: dict[str, Any] = {"error": error.code, "message": error.message}
    headers: dict[str, str] = {}
    if isinstance(error, MethodNotAllowed):
        headers["Allow"] = ", ".join(error.allowed)
    if isinstance(error, NotServiceRole):
        body["role"] = error.role
    if isinstance(error, AuthError):
        headers["WWW-Authenticate"] = 'Bearer realm="engagement-events"'
    if isinstance(error, RateLimited | StoreUnavailable):
        headers["Retry-After"] = str(error.retry_after)
        body["retry_after"] = error.retry_after
    if isinstance(error, StoreError):
        # StoreError.code carries the store's own code (SQLSTATE or PGRST...); the body's
        # `error` stays one of the two stable codes callers branch on.
        body["error"] = (
            "store_unavailable" if isinstance(error, StoreUnavailable) else "store_error"
        )
        if error.code not in ("store_unavailable", "store_error"):
            body["store_code"] = error.code
        if error.hint:
            body["hint"] = error.hint
        body["stored"] = error.stored
    if status == 500:
        body = {"error": "internal_error", "message": "the function is misconfigured; see its logs"}
    return json_response(body, status, request_id, headers)


def internal_error_response(request_id: str) -> flask.Response:
    return json_response(
        {"error": "internal_error", "message": "an unexpected error occurred; it has been logged"},
        500,
        request_id,
    )
