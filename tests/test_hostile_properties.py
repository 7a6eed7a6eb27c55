"""Property-based hostile input (Hypothesis) through the real functions-framework apps.

Arbitrary JSON (any type, nested up to the body's depth limit) in every field of an event and
of the envelope, and arbitrary claims in a validly signed token, go to all three functions. No
answer may be a 5xx or anything but a JSON body, and no log line may repeat input: every string
the generators make carries a marker, and the marker must never reach a log line, the
traceback of one, or the process's stdout and stderr.

Deterministic (derandomized, no example database) and bounded, so the module runs in about a
minute.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import hmac
import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from functions import handlers, log
from tests.conftest import ANA, BEN, SECRET, Database, create_app, forget_function_state, token

MARK = "QZXMARK"
"""Planted in every generated string; a log line that holds it repeats input."""

EXAMPLES = 60
"""Examples per property: enough to cross every field with every JSON type, within seconds."""

FIELD_DEPTH = 58
"""Deepest nesting generated inside one field: with the envelope, the event list and the event
around it, a body stays within the documented depth limit of 64 (deeper ones are 400s, which
test_hostile_input checks)."""

PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --- generators -------------------------------------------------------------------------------

# Any code point, lone surrogates and NUL included (JSON escapes them), with the marker.
marked_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=6).map(
    lambda text: text + MARK
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 2**53 + 1])
    | st.floats(allow_nan=False, allow_infinity=False)
    | marked_text
)
shallow = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(marked_text, inner, max_size=3),
    max_leaves=6,
)


def _nest(depth: int, inner: Any, as_object: bool) -> Any:
    for _ in range(depth):
        inner = {MARK: inner} if as_object else [inner]
    return inner


deep = st.builds(_nest, st.integers(1, FIELD_DEPTH), shallow, st.booleans())
any_json = shallow | deep

# Plausible values next to the arbitrary ones, so that validation goes past the first field.
EVENT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "user_id": st.sampled_from([ANA, BEN, ANA.upper(), ANA.replace("-", "")]) | any_json,
    "event_type": st.sampled_from(["app_open", "goal_complete", "steps_import", "custom_x"])
    | any_json,
    "timestamp": st.sampled_from(
        ["2025-06-01T07:30:00", "2025-06-01T07:30:00Z", "2024-03-10T02:30:00"]
    )
    | any_json,
    "timezone": st.sampled_from(["Europe/Berlin", "America/New_York", "Factory"]) | any_json,
    "value": st.dictionaries(
        st.sampled_from(["platform", "steps", "goal_id", "source", "period_start"]) | marked_text,
        any_json,
        max_size=3,
    )
    | any_json,
    "event_id": st.uuids().map(str) | any_json,
    "revision": st.integers(0, 2**53) | any_json,
    "deleted": st.booleans() | any_json,
    MARK: any_json,  # a key no schema knows
}
events = st.fixed_dictionaries({}, optional=EVENT_FIELDS) | any_json
envelopes = (
    st.fixed_dictionaries(
        {"events": st.lists(events, min_size=1, max_size=4)},
        optional={
            "mode": st.sampled_from(["partial", "atomic"]) | any_json,
            "default_timezone": st.sampled_from(["UTC", "Asia/Tokyo"]) | any_json,
            MARK: any_json,
        },
    )
    | st.lists(events, min_size=1, max_size=4)
    | st.fixed_dictionaries({"events": any_json})
)

conversion_items = (
    st.fixed_dictionaries(
        {},
        optional={
            "timestamp": st.sampled_from(["2025-06-01T07:30:00", "2025-06-01T07:30:00Z"])
            | any_json,
            "timezone": st.sampled_from(["Europe/Berlin", "Pacific/Kiritimati"]) | any_json,
            MARK: any_json,
        },
    )
    | any_json
)
conversion_bodies = st.fixed_dictionaries(
    {"timestamps": st.lists(conversion_items, min_size=1, max_size=4) | any_json},
    optional={"default_timezone": st.sampled_from(["UTC"]) | any_json, MARK: any_json},
)

GOOGLE_ISSUERS = ["https://accounts.google.com", "accounts.google.com"]
ABSENT = object()
"""Drawn for a claim the token leaves out."""


def claim(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.just(ABSENT) | plausible | any_json


claim_values: dict[str, st.SearchStrategy[Any]] = {
    "role": claim(st.sampled_from(["service_role", "authenticated", "anon"])),
    "iss": claim(st.sampled_from([*GOOGLE_ISSUERS, "supabase"])),
    "exp": claim(st.sampled_from([int(time.time()) + 3600, 10**400, -(10**400), 1e308])),
    "nbf": claim(st.sampled_from([0, 10**400])),
    "iat": claim(st.sampled_from([0, 10**400, 1e308])),
    "sub": claim(st.uuids().map(str)),
    "aud": claim(st.just("authenticated")),
    MARK: claim(st.just(MARK)),
}
claims = (
    st.fixed_dictionaries(claim_values).map(
        lambda drawn: {name: value for name, value in drawn.items() if value is not ABSENT}
    )
    | any_json
)
headers_of_tokens = st.fixed_dictionaries(
    {"alg": st.sampled_from(["HS256", "ES256", "RS256", "none"]) | any_json},
    optional={"typ": st.just("JWT") | any_json, "kid": any_json, "crit": any_json},
)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(header: Any, payload: Any) -> str:
    """A token signed HS256 with the project's JWT secret, whatever its header and claims."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


# --- the functions and their logs -------------------------------------------------------------


@dataclass
class Functions:
    clients: dict[str, FlaskClient]
    lines: list[str]


@pytest.fixture
def functions(db: Database, monkeypatch: pytest.MonkeyPatch) -> Iterator[Functions]:
    monkeypatch.setenv("SUPABASE_JWT_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", db.url)
    monkeypatch.delenv("SUPABASE_URL", raising=False)
    clients = {}
    for target in ("batch_import", "convert_timestamps", "verify_service_jwt"):
        monkeypatch.setenv("FUNCTION_TARGET", target)
        handlers.state.cache_clear()
        clients[target] = create_app(target).test_client()
    # One state for the three (built for batch_import, which alone needs the sink).
    monkeypatch.setenv("FUNCTION_TARGET", "batch_import")
    handlers.state.cache_clear()
    lines: list[str] = []
    with collected_logs(lines):
        yield Functions(clients, lines)
    forget_function_state()


@contextlib.contextmanager
def collected_logs(lines: list[str]) -> Iterator[None]:
    """Every log record of the package and of everything else (Flask's "Exception on /"),
    formatted as Cloud Logging receives it, with any traceback in full."""
    formatter = log.CloudLoggingFormatter()

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            text = formatter.format(record)
            if record.exc_info and record.exc_info[1] is not None:
                text += " " + "".join(traceback.format_exception(record.exc_info[1]))
            lines.append(text)

    handler = Collect(logging.DEBUG)
    loggers = [logging.getLogger("functions"), logging.getLogger()]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def body_bytes(body: Any) -> bytes:
    # ASCII JSON: lone surrogates travel as escapes, the way a caller can send them.
    return json.dumps(body).encode()


def post_json(client: FlaskClient, data: bytes, headers: dict[str, str]) -> Any:
    return client.post("/", data=data, content_type="application/json", headers=headers)


def answered(
    functions: Functions,
    capfd: pytest.CaptureFixture[str],
    send: Callable[[], Any],
) -> Any:
    """Send one request; its answer, after the checks every answer must pass."""
    functions.lines.clear()
    capfd.readouterr()
    response = send()
    assert response.status_code < 500, response.get_data()[:300]
    assert response.mimetype == "application/json"
    assert isinstance(response.get_json(), dict)
    out, err = capfd.readouterr()
    for text in [*functions.lines, out, err]:
        assert MARK not in text, f"input repeated in the logs: {text[:300]}"
    assert any('"status": ' in line for line in functions.lines), "no request line was logged"
    return response


# --- the properties ---------------------------------------------------------------------------


@PROPERTY
@given(body=envelopes)
def test_any_batch_is_answered_without_a_5xx_or_a_log_line_that_repeats_it(
    functions: Functions, capfd: pytest.CaptureFixture[str], body: Any
) -> None:
    client = functions.clients["batch_import"]
    response = answered(
        functions,
        capfd,
        lambda: client.post(
            "/",
            data=body_bytes(body),
            content_type="application/json",
            headers={"Authorization": f"Bearer {token()}"},
        ),
    )
    assert response.status_code in (200, 400, 413, 422)


@PROPERTY
@given(body=conversion_bodies, zone=st.none() | any_json, stamp=any_json)
def test_any_conversion_is_answered_without_a_5xx_or_a_log_line_that_repeats_it(
    functions: Functions, capfd: pytest.CaptureFixture[str], body: Any, zone: Any, stamp: Any
) -> None:
    client = functions.clients["convert_timestamps"]
    auth = {"Authorization": f"Bearer {token()}"}
    response = answered(
        functions,
        capfd,
        lambda: client.post(
            "/", data=body_bytes(body), content_type="application/json", headers=auth
        ),
    )
    assert response.status_code in (200, 400, 413)
    query = {"timestamp": json.dumps(stamp) if not isinstance(stamp, str) else stamp}
    if zone is not None:
        query["timezone"] = zone if isinstance(zone, str) else json.dumps(zone)
    # Query strings are text: lone surrogates cannot travel in them.
    query = {k: v.encode("utf-8", "replace").decode() for k, v in query.items()}
    response = answered(functions, capfd, lambda: client.get("/", query_string=query, headers=auth))
    assert response.status_code in (200, 400, 422)


@PROPERTY
# The shapes the attack review found, always among the examples: an issuer that is no string
# next to an apikey, and time claims no float can hold.
@example(header={"alg": "HS256"}, payload={"iss": ["x"]}, where="apikey behind a Google token")
@example(header={"alg": "HS256"}, payload={"iss": {"a": 1}}, where="apikey behind a Google token")
@example(header={"alg": "HS256"}, payload={"role": "service_role", "exp": 10**400}, where="body")
@given(
    header=headers_of_tokens,
    payload=claims,
    where=st.sampled_from(["authorization", "apikey behind a Google token", "body"]),
)
def test_any_signed_token_is_answered_401_403_or_200_without_a_log_line_that_repeats_it(
    functions: Functions,
    capfd: pytest.CaptureFixture[str],
    header: Any,
    payload: Any,
    where: str,
) -> None:
    forged = signed(header, payload)
    if where != "apikey behind a Google token":
        headers = {"Authorization": f"Bearer {forged}"}
    else:
        # The token rides in Authorization next to an apikey: the issuer check decides which
        # one is the credential (Cloud Scheduler sends its Google ID token there).
        headers = {"Authorization": f"Bearer {forged}", "apikey": MARK + "-not-a-key"}
    small_batch = body_bytes([{"user_id": ANA, "event_type": "app_open"}])
    small_conversion = body_bytes({"timestamps": [{"timestamp": "2025-06-01T07:30:00Z"}]})
    for target, data in (
        ("batch_import", small_batch),
        ("convert_timestamps", small_conversion),
        ("verify_service_jwt", b""),
    ):
        client = functions.clients[target]
        if target == "verify_service_jwt" and where == "body":
            data = body_bytes({"token": forged})
            sent_headers: dict[str, str] = {}
        else:
            sent_headers = headers
        response = answered(
            functions, capfd, functools.partial(post_json, client, data, sent_headers)
        )
        assert response.status_code in (200, 401, 403, 422), (target, response.get_json())
        if response.status_code == 200 and target == "verify_service_jwt":
            assert response.get_json()["role"] == "service_role"
