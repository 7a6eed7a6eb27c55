"""Hostile input by hand, through the real functions-framework app and the real database:
whatever is sent, the answer is a documented 4xx with the contract's body or a per-event
rejection, never a 5xx; what is stored is exactly what was valid."""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client as http_client
import io
import json
import logging
import os
import socket
import subprocess
import sys
import time
import traceback
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from functions import http, log
from functions.http import compressed_ceiling
from tests import openapi_contract as contract
from tests.conftest import (
    ANA,
    BEN,
    MAIN,
    SECRET,
    AppFactory,
    ClientFactory,
    Database,
    auth,
    event,
    json_body,
    stored,
)


def post(client: FlaskClient, body: bytes | str, **headers: str) -> contract.Answer:
    """POST raw bytes as JSON to batch_import; the answer, checked against openapi.yaml."""
    data = body.encode("utf-8", errors="surrogatepass") if isinstance(body, str) else body
    response = client.post(
        "/", data=data, content_type="application/json", headers={**auth(), **headers}
    )
    answer = contract.from_flask(response)
    assert answer.status < 500, answer.body[:300]
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    return answer


def values_stored(db: Database) -> list[Any]:
    with db.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                "select value from public.engagement_events where timestamp >= '2025-01-01'"
                " order by timestamp"
            )
        ]


def table_count(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("select count(*) from public.engagement_events").fetchone()
    assert row is not None
    return int(row[0])


GOOD = event(timestamp="2025-06-01T07:30:00Z", timezone=None, event_type="custom_x", value={})


def with_field(name: str, json_text: str, base: dict[str, Any] | None = None) -> str:
    """An event as JSON text whose field `name` is the raw JSON `json_text` (which may hold
    escapes, such as lone surrogates, that Python cannot encode)."""
    fields = {k: json.dumps(v) for k, v in (base or GOOD).items() if k != name}
    fields[name] = json_text
    return "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in fields.items()) + "}"


# --- structure ----------------------------------------------------------------------------------


def test_json_nested_100k_levels_is_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 100_000 + b"1" + b"}" * 100_000):
        answer = post(client, body)
        assert answer.status == 400
        assert answer.json["error"] == "malformed_request"
        assert answer.json["message"] == "the body is nested more than 64 levels deep"


JSON_DEPTH_LIMIT = http.MAX_JSON_DEPTH
"""The body nesting batch_import documents (issue 12's limit of the JSON decoder)."""


def _nest(depth: int, inner: Any, as_object: bool) -> Any:
    for _ in range(depth):
        inner = {"k": inner} if as_object else [inner]
    return inner


APP_OPEN = event(timestamp="2025-06-01T07:30:00Z", timezone=None)

# Each places a value that fails the schema so that the whole body (a bare array of two events)
# is `depth` levels deep: the array, the event, then the field's own nesting.
DEEP_EVENT_FIELDS = {
    "unknown key": lambda d: {**APP_OPEN, "typo": _nest(d - 2, 1, False)},
    "event_id": lambda d: {**APP_OPEN, "event_id": _nest(d - 2, 1, False)},
    "timezone": lambda d: {**APP_OPEN, "timezone": _nest(d - 2, 1, True)},
    "a known payload's field": lambda d: {
        **APP_OPEN,
        "value": {"platform": _nest(d - 3, 1, False)},
    },
}
# An envelope `depth` levels deep: the object, then the field's nesting.
DEEP_ENVELOPE_FIELDS = {
    "mode": lambda d: {"events": [APP_OPEN], "mode": _nest(d - 1, 1, False)},
    "default_timezone": lambda d: {"events": [APP_OPEN], "default_timezone": _nest(d - 1, 1, True)},
    "an unknown key": lambda d: {"events": [APP_OPEN], "unknown": _nest(d - 1, 1, True)},
}
DEPTHS = [JSON_DEPTH_LIMIT, JSON_DEPTH_LIMIT + 1, 300]
"""At the limit, just above it, and past jsonschema-rs's own recursion limit (about 255)."""


def failures_stored(db: Database) -> int:
    with db.connect() as conn:
        row = conn.execute("select count(*) from private.engagement_event_failures").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("field", list(DEEP_EVENT_FIELDS))
def test_a_deep_field_failing_the_schema_rejects_its_event_alone(
    db: Database, make_client: ClientFactory, field: str, depth: int
) -> None:
    body = [event(timestamp="2025-06-01T08:30:00Z", timezone=None), DEEP_EVENT_FIELDS[field](depth)]
    answer = post(make_client("batch_import"), json.dumps(body))
    if depth > JSON_DEPTH_LIMIT:
        # The body's depth limit refuses it before any event is looked at.
        assert answer.status == 400, answer.json
        assert answer.json["error"] == "malformed_request"
        assert failures_stored(db) == 0
        return
    assert answer.status == 200, answer.json
    assert answer.json["inserted"] == 1
    assert [r["index"] for r in answer.json["rejected"]] == [1]
    assert failures_stored(db) == 1  # kept for replay


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("field", list(DEEP_ENVELOPE_FIELDS))
def test_a_deep_envelope_field_is_400(
    db: Database, make_client: ClientFactory, field: str, depth: int
) -> None:
    answer = post(make_client("batch_import"), json.dumps(DEEP_ENVELOPE_FIELDS[field](depth)))
    assert answer.status == 400, answer.json
    assert answer.json["error"] == "malformed_request"
    assert failures_stored(db) == 0


def nested_body(depth: int, *, brackets_in_strings: bool = False) -> str:
    """A one-event batch whose nesting is `depth` levels in all: the array of events is
    level 1, the event 2, its value 3, and arrays inside the value the rest."""
    inner = depth - 3
    leaf = '"]]}}[[{{\\"\\\\"' if brackets_in_strings else ""
    value = '{"a":' + "[" * inner + leaf + "]" * inner + "}"
    return "[" + with_field("value", value) + "]"


@pytest.mark.parametrize("depth", [4, 64, 65, 5_000])
def test_a_body_nested_more_than_64_levels_is_refused_on_every_python(
    db: Database, make_client: ClientFactory, depth: int
) -> None:
    """The project's own limit: 64 levels (the outermost array is level 1) pass, 65 do not,
    whatever the interpreter's own recursion limit would allow."""
    client = make_client("batch_import")
    answer = post(client, nested_body(depth))
    if depth <= 64:
        assert answer.status == 200, answer.json
        assert answer.json["inserted"] == 1
        nested = values_stored(db)[0]["a"]
        levels = 0
        while nested:
            nested, levels = nested[0], levels + 1
        assert levels == depth - 4  # the innermost array is empty
    else:
        assert answer.status == 400
        assert answer.json == {
            "error": "malformed_request",
            "message": "the body is nested more than 64 levels deep",
            "request_id": answer.json["request_id"],
        }
        assert values_stored(db) == []


def test_brackets_and_escaped_quotes_inside_strings_are_not_nesting(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    answer = post(client, nested_body(64, brackets_in_strings=True))
    assert answer.status == 200, answer.json
    assert answer.json["inserted"] == 1
    assert post(client, nested_body(65, brackets_in_strings=True)).status == 400


def test_duplicate_keys_anywhere_are_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    inner = GOOD | {"value": {}}
    duplicated = json.dumps([inner]).replace('"value": {}', '"value": {"k": 1, "k": 2}')
    for body in (duplicated, json.dumps([inner])[:-2] + ', "user_id": "' + BEN + '"}]'):
        answer = post(client, body)
        assert answer.status == 400
        assert "repeats a key" in answer.json["message"]


def test_numbers_json_or_a_double_cannot_hold_are_400(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    for number in ["NaN", "Infinity", "-Infinity", "1e400", "-1e999", "9" * 5000]:
        answer = post(client, "[" + with_field("value", '{"n":' + number + "}") + "]")
        assert answer.status == 400, number
        assert answer.json["error"] == "malformed_request"
        assert "99999" not in answer.json["message"]
    assert table_count(db) == 5000  # the seed alone


# --- bytes and characters -----------------------------------------------------------------------


NOT_UTF8_JSON = [
    b"\xff\xfe[]",
    b'[{"a": "\xc0\xaf"}]',  # overlong encoding of /
    b'[{"a": "\xed\xa0\x80"}]',  # a surrogate encoded as UTF-8
    b'[{"a": "\xe2\x82"}]',  # truncated sequence
    b"\xef\xbb\xbf[]",  # a byte order mark
    b'[{"a": "x\x00y"}]',  # a raw NUL byte inside a string
    b"[\x00]",
]


def test_bytes_that_are_not_utf8_json_are_400(make_client: ClientFactory) -> None:
    client = make_client("batch_import")
    for raw in NOT_UTF8_JSON:
        answer = post(client, raw)
        assert answer.status == 400, raw
        assert answer.json["error"] == "malformed_request"


STRING_FIELDS = ["user_id", "event_type", "timestamp", "timezone", "event_id"]


@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "a\\u0000b", "\\u0000"])
def test_lone_surrogates_and_nul_are_per_event_rejections(
    db: Database, make_client: ClientFactory, escape: str
) -> None:
    """jsonb refuses \\u0000 and lone surrogates: in any field, in a key of value or of the
    event, the event alone is rejected and the rest of the batch is stored."""
    bad_events = [with_field(name, f'"{escape}"') for name in STRING_FIELDS]
    bad_events += [
        with_field("value", f'{{"note": "{escape}"}}'),
        with_field("value", f'{{"{escape}": 1}}'),
        with_field("value", f'{{"deep": [{{"x": ["{escape}"]}}]}}'),
        with_field(
            "value",
            f'{{"platform": "ios", "os_version": "{escape}"}}',
            base=GOOD | {"event_type": "app_open"},
        ),
        with_field(escape, "1"),
    ]
    good = [
        json.dumps(event(timestamp=f"2025-06-01T08:0{i}:00Z", timezone=None, event_type="custom_x"))
        for i in range(2)
    ]
    body = "[" + good[0] + "," + ",".join(bad_events) + "," + good[1] + "]"
    answer = post(make_client("batch_import"), body)
    assert answer.status == 200
    assert answer.json["inserted"] == 2
    assert [r["index"] for r in answer.json["rejected"]] == list(range(1, len(bad_events) + 1))
    assert len(stored(db)) == 2


def test_a_surrogate_outside_the_events_is_400(make_client: ClientFactory) -> None:
    body = '{"events": [' + json.dumps(GOOD) + '], "mode": "\\ud800"}'
    answer = post(make_client("batch_import"), body)
    assert answer.status == 400


# --- sizes --------------------------------------------------------------------------------------


def test_huge_strings_within_and_over_the_limits(db: Database, make_client: ClientFactory) -> None:
    client = make_client(
        "batch_import", MAX_EVENT_BYTES=str(64 * 1024), MAX_BODY_BYTES=str(1024 * 1024)
    )
    within = GOOD | {"value": {"note": "w" * 60_000}}
    over = GOOD | {"value": {"note": "o" * 70_000}, "timestamp": "2025-06-01T07:31:00Z"}
    answer = post(client, json.dumps([within, over]))
    assert answer.status == 200
    assert answer.json["inserted"] == 1
    assert answer.json["rejected"][0]["index"] == 1
    assert "larger than the limit" in answer.json["rejected"][0]["errors"][0]["message"]
    assert values_stored(db) == [{"note": "w" * 60_000}]
    # Huge strings in the checked fields: rejected, and never repeated in the answer.
    for name in ("user_id", "event_type", "timestamp", "timezone", "event_id"):
        answer = post(client, json.dumps([GOOD | {name: "Z" * 50_000}]))
        assert answer.status == 422
        assert len(answer.body) < 2_000
    too_big = post(client, json.dumps([GOOD | {"value": {"note": "b" * 1_100_000}}]))
    assert too_big.status == 413


def test_gzip_bombs_are_stopped_at_the_limit(db: Database, make_client: ClientFactory) -> None:
    limit = 256 * 1024
    client = make_client("batch_import", MAX_BODY_BYTES=str(limit), MAX_EVENT_BYTES="65536")
    gz = {"Content-Encoding": "gzip"}
    bomb = gzip.compress(b"[" + b" " * (100 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < limit  # 100 MiB of JSON in a body that passes the size check
    answer = post(client, bomb, **gz)
    assert answer.status == 413
    assert "decompresses to more than" in answer.json["message"]
    # Just under the limit decompressed: accepted.
    padding = limit - len(json.dumps([GOOD])) - 10
    fits = gzip.compress(json.dumps([GOOD]).encode() + b" " * padding)
    assert post(client, fits, **gz).status == 200
    # Data after the gzip stream, and a stream cut short, are malformed.
    assert post(client, fits + b"junk", **gz).status == 400
    assert post(client, fits[:-10], **gz).status == 400


def test_a_refused_body_is_not_kept_in_memory(make_client: ClientFactory) -> None:
    """Incompressible data sent as gzip, with no Content-Length: the function stops reading
    it into memory just past the compressed ceiling, and drops the rest (functions-framework
    would otherwise buffer all of it after the answer)."""
    limit = 64 * 1024
    client = make_client("batch_import", MAX_BODY_BYTES=str(limit), MAX_EVENT_BYTES="1024")
    stream = io.BytesIO(os.urandom(16 * 1024 * 1024))
    tracemalloc.start()
    try:
        response = client.post(
            "/",
            headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
            environ_overrides={"wsgi.input": stream, "wsgi.input_terminated": True},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    answer = contract.from_flask(response)
    assert answer.status == 413
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    assert f"limit of {compressed_ceiling(limit)} bytes" in answer.json["message"]
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held for a 16 MiB body"
    assert stream.tell() == 16 * 1024 * 1024  # read to the end, so the connection stays usable
    declared = client.post(
        "/",
        data=b"\x1f\x8b" + b"\x00" * 300_000,
        headers={**auth(), "Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert declared.status_code == 413
    assert "compressed body" in json_body(declared)["message"]


class Whitespace(io.RawIOBase):
    """A body of ``size`` bytes of JSON whitespace, made as it is read: a large upload that
    costs the sender no memory, and that knows how far it was read."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = min(len(buffer), self.size - self.position)
        buffer[:count] = b" " * count
        self.position += count
        return count


MiB = 1024 * 1024
NO_DATABASE: dict[str, str | None] = {
    "SUPABASE_JWT_SECRET": SECRET,
    "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/never-connected",
    "SUPABASE_URL": None,
}
"""The configuration of a function whose answer comes before any write: the sink is built on
first use only, so no database is started or reached."""
EARLY_ANSWERS = [
    pytest.param("POST", {"Content-Type": "application/json"}, 401, id="401 no credential"),
    pytest.param(
        "POST",
        {"Content-Type": "application/json", "Authorization": "Bearer a.b.c"},
        401,
        id="401 forged token",
    ),
    pytest.param(
        "POST", {"Content-Type": "application/json", **auth("authenticated")}, 403, id="403 role"
    ),
    pytest.param("PUT", {"Content-Type": "application/json", **auth()}, 405, id="405 method"),
    pytest.param("POST", {"Content-Type": "text/plain", **auth()}, 415, id="415 content type"),
    pytest.param("POST", {"Content-Type": "application/json", **auth()}, 413, id="413 size"),
]


def send_whitespace(
    client: FlaskClient, method: str, headers: dict[str, str], body: Whitespace, *, declared: bool
) -> tuple[contract.Answer, int]:
    """Send ``body`` (with its length declared, or streamed without one); the answer and the
    most memory the request held at once, traced."""
    environ: dict[str, Any] = {"wsgi.input": body}
    if declared:
        environ["CONTENT_LENGTH"] = str(body.size)
    else:
        environ["wsgi.input_terminated"] = True
    tracemalloc.start()
    try:
        response = client.open("/", method=method, headers=headers, environ_overrides=environ)
        answer = contract.from_flask(response)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return answer, peak


@pytest.mark.parametrize("declared", [True, False], ids=["Content-Length", "streamed"])
@pytest.mark.parametrize(("method", "headers", "status"), EARLY_ANSWERS)
def test_early_answers_read_the_body_to_its_end_without_holding_it(
    function_app: AppFactory, method: str, headers: dict[str, str], status: int, declared: bool
) -> None:
    """functions-framework reads the whole request after every answer and keeps it: a 50 MiB
    body refused before it was read must be drained by the function, a chunk at a time."""
    client = function_app(
        "batch_import", **NO_DATABASE, MAX_BODY_BYTES=str(MiB), MAX_EVENT_BYTES="1024"
    ).test_client()
    body = Whitespace(50 * MiB)
    answer, peak = send_whitespace(client, method, headers, body, declared=declared)
    assert answer.status == status, answer.body[:300]
    assert answer.json["error"]
    assert peak < 4 * MiB, f"{peak} bytes held for a 50 MiB body answered {status}"
    assert body.position == body.size  # read to the end, so the connection stays usable


def test_a_body_past_the_drain_cap_is_left_to_the_server_not_buffered(
    function_app: AppFactory,
) -> None:
    """Past the 64 MiB the function drains, the answer is sent as an iterable body, which
    functions-framework does not follow with a read of the rest."""
    client = function_app("batch_import", **NO_DATABASE).test_client()
    body = Whitespace(80 * MiB)
    answer, peak = send_whitespace(
        client, "POST", {"Content-Type": "application/json"}, body, declared=False
    )
    assert answer.status == 401
    assert answer.json["error"] == "missing_credentials"
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    assert peak < 4 * MiB, f"{peak} bytes held for an 80 MiB body"
    assert 64 * MiB <= body.position < body.size


def test_a_rate_limited_body_costs_no_more_than_the_body_limit(
    make_client: ClientFactory,
) -> None:
    """A 429 is decided after the body is read (it counts events), so what it holds is bounded
    by MAX_BODY_BYTES: a body over it is a 413 first, drained like the other early answers."""
    client = make_client(
        "batch_import",
        MAX_BODY_BYTES=str(MiB),
        MAX_EVENT_BYTES="1024",
        RATE_LIMIT_REQUESTS_PER_MINUTE="1",
    )
    one = json.dumps([GOOD]).encode()
    first = client.post("/", data=one, content_type="application/json", headers=auth())
    assert first.status_code == 200
    padded = one + b" " * (MiB - len(one))
    tracemalloc.start()
    try:
        response = client.post("/", data=padded, content_type="application/json", headers=auth())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 429
    assert peak < 6 * MiB
    over = Whitespace(50 * MiB)
    answer, peak = send_whitespace(
        client, "POST", {"Content-Type": "application/json", **auth()}, over, declared=False
    )
    assert answer.status == 413
    assert peak < 4 * MiB
    assert over.position == over.size


def _peak_rss_kib(pid: int) -> int:
    """The most memory process ``pid`` has held resident so far (Linux's VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


def _post_streamed(port: int, size: int, chunk: bytes) -> int:
    """POST ``size`` bytes of whitespace to the local server, chunked, with no credential; the
    status it answers."""
    connection = http_client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.putrequest("POST", "/")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        sent = 0
        while sent < size:
            connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak memory is read from /proc")
def test_a_real_server_refuses_an_unauthenticated_50_mib_upload_without_holding_it(
    db: Database,
) -> None:
    """functions-framework as Cloud Functions runs it (gunicorn, one worker): a 50 MiB body
    without a credential is answered 401 and the worker's peak memory barely moves."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "FUNCTION_TARGET": "batch_import",
        "SUPABASE_JWT_SECRET": SECRET,
        "DATABASE_URL": db.url,
        "THREADS": "2",
    }
    env.pop("SUPABASE_URL", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "functions_framework",
            "--target=batch_import",
            f"--source={MAIN}",
            "--host=127.0.0.1",
            f"--port={port}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _post_streamed(port, 1024, b" " * 1024) == 401  # warm: imports, first use
                break
            except OSError:
                assert server.poll() is None, "the server exited"
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert len(children) == 1, children
        worker = int(children[0])
        before = _peak_rss_kib(worker)
        assert _post_streamed(port, 50 * MiB, b" " * (64 * 1024)) == 401
        grown = _peak_rss_kib(worker) - before
        assert grown < 16 * 1024, f"the worker's peak grew by {grown} KiB for a 50 MiB body"
        # The connection-level drain left the worker serving.
        assert _post_streamed(port, 1024, b" " * 1024) == 401
    finally:
        server.terminate()
        server.wait(timeout=30)


# --- metacharacters -----------------------------------------------------------------------------

META = ["'; drop table public.engagement_events; --", "~0", "~1", "/", "a/b~c", '"\\', "$$", "%s"]


def test_sql_and_pointer_metacharacters_are_data(db: Database, make_client: ClientFactory) -> None:
    """In every string field, in keys of value and of the event: the valid event is stored
    byte for byte, the others are rejected at the right JSON pointer, the table is intact."""
    client = make_client("batch_import")
    kept_values = []
    for minute, text in enumerate(META):
        value = {text: text, "nested": {text: [text]}}
        kept = GOOD | {"value": value, "timestamp": f"2025-06-01T09:{minute:02d}:00Z"}
        events = [kept] + [GOOD | {name: text} for name in STRING_FIELDS] + [GOOD | {text: 1}]
        known = GOOD | {"event_type": "app_open", "value": {"platform": "ios", text: 1}}
        events.append(known)
        answer = post(client, json.dumps({"events": events, "default_timezone": "UTC"}))
        assert answer.status == 200, text
        assert answer.json["inserted"] == 1
        rejected = {r["index"]: [e["path"] for e in r["errors"]] for r in answer.json["rejected"]}
        expected_paths = {i + 1: [f"/{name}"] for i, name in enumerate(STRING_FIELDS)}
        expected_paths[len(STRING_FIELDS) + 1] = [""]
        expected_paths[len(STRING_FIELDS) + 2] = ["/value"]
        assert rejected == expected_paths, text
        kept_values.append(value)
    assert values_stored(db) == kept_values
    assert table_count(db) == 5000 + len(META)


# --- one bad event among 10,000 -----------------------------------------------------------------


def _ten_thousand(bad_index: int) -> list[dict[str, Any]]:
    events = [
        {
            "user_id": ANA if i % 2 else BEN,
            "event_type": "steps_import",
            "timestamp": f"2025-03-{1 + i // 1440:02d}T{(i // 60) % 24:02d}:{i % 60:02d}:00Z",
            "value": {"steps": i},
        }
        for i in range(10_000)
    ]
    events[bad_index] = events[bad_index] | {"value": {"steps": -1}}
    return events


def test_ten_thousand_events_one_bad_partial(db: Database, make_client: ClientFactory) -> None:
    answer = post(make_client("batch_import"), json.dumps(_ten_thousand(7_321)))
    assert answer.status == 200
    assert answer.json["inserted"] == 9_999
    assert answer.json["rejected"] == [
        {
            "index": 7_321,
            "event_id": None,
            "errors": [{"path": "/value/steps", "message": "/value/steps must be at least 0"}],
        }
    ]
    assert table_count(db) == 5_000 + 9_999


def test_ten_thousand_events_one_bad_atomic(db: Database, make_client: ClientFactory) -> None:
    body = json.dumps({"mode": "atomic", "events": _ten_thousand(9_999)})
    answer = post(make_client("batch_import"), body)
    assert answer.status == 422
    assert (answer.json["inserted"], answer.json["duplicates"]) == (0, 0)
    assert [r["index"] for r in answer.json["rejected"]] == [9_999]
    assert table_count(db) == 5_000


# --- the other two functions --------------------------------------------------------------------


HOSTILE_CONVERT_BODIES = [
    '{"timestamps": [{"timestamp": "\\ud800", "timezone": "\\udfff"}]}',
    '{"timestamps": [{"timestamp": "2024-01-01T00:00:00\\u0000", "timezone": "UTC"}]}',
    '{"timestamps": [{"timestamp": "2024-01-01T00:00:00"}], "default_timezone": "\\ud800"}',
    '{"timestamps": [' + ",".join(['{"timestamp": "' + "9" * 10_000 + '"}'] * 50) + "]}",
    '{"timestamps": [' + "[" * 5_000 + "]" * 5_000 + "]}",
    '{"timestamps": [{"timestamp": 1e400}]}',
]


def test_convert_timestamps_survives_hostile_bodies(make_client: ClientFactory) -> None:
    client = make_client("convert_timestamps")
    for body in HOSTILE_CONVERT_BODIES:
        response = client.post(
            "/",
            data=body.encode("utf-8", "surrogatepass"),
            content_type="application/json",
            headers=auth(),
        )
        answer = contract.from_flask(response)
        assert answer.status in (200, 400), body[:80]
        assert contract.contract_problems(answer, "/convert_timestamps", "post") == []
        if answer.status == 200:
            assert all("error" in result for result in answer.json["results"])


@contextlib.contextmanager
def log_lines() -> Iterator[list[str]]:
    """Every log line written while the block runs, as Cloud Logging would receive it: the
    package's structured lines and anything else that reaches the root logger (Flask's own
    "Exception on /" traceback, for one)."""
    lines: list[str] = []
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
        yield lines
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_a_lone_surrogate_in_a_body_key_is_a_json_400_that_never_repeats_the_key(
    make_client: ClientFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    client = make_client("convert_timestamps")
    body = '{"timestamps": [{"timestamp": "2024-01-01T00:00:00Z"}], "\\ud800 KEYMARKER": 1}'
    with log_lines() as lines:
        response = client.post(
            "/", data=body.encode(), content_type="application/json", headers=auth()
        )
    answer = contract.from_flask(response)
    assert answer.status == 400
    assert answer.json["error"] == "malformed_request"
    assert contract.contract_problems(answer, "/convert_timestamps", "post") == []
    assert "KEYMARKER" not in response.get_data(as_text=True)
    assert any('"status": 400' in line for line in lines), lines
    out, err = capfd.readouterr()
    for text in [*lines, out, err]:
        assert "KEYMARKER" not in text
        assert "Traceback" not in text


def test_an_answer_carrying_a_lone_surrogate_is_json_in_ascii() -> None:
    """An answer never fails to encode: a lone surrogate, which UTF-8 cannot hold, is written
    as its JSON escape."""
    response = http.json_response({"message": "zone \ud800 is odd"}, 400, "request-id-1")
    data = response.get_data()
    assert data.isascii()
    assert json.loads(data)["message"] == "zone \ud800 is odd"
    plain = http.json_response({"message": "Zürich"}, 200, "request-id-2").get_data()
    assert json.loads(plain)["message"] == "Zürich"
    assert "Zürich".encode() in plain  # UTF-8 as before when it can be


def _unsigned_token(claims: Any) -> str:
    def part(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize("target", ["batch_import", "convert_timestamps", "verify_service_jwt"])
@pytest.mark.parametrize(
    "iss",
    [["x"], {"a": 1}, [], {}, 1, 1.5, True, None, "accounts.google.com", "x" * 10_000],
    ids=lambda iss: repr(iss)[:24],
)
def test_any_issuer_next_to_an_apikey_is_401(
    function_app: AppFactory, target: str, iss: Any
) -> None:
    """Which header holds the credential depends on the bearer token's unverified issuer;
    whatever JSON the issuer is, the answer is a 401 (the apikey is no key, the token is not
    signed), never a 500."""
    client = function_app(
        target, **NO_DATABASE, SUPABASE_SECRET_KEYS="sb_secret_" + "k" * 32
    ).test_client()
    headers = {
        "Authorization": f"Bearer {_unsigned_token({'iss': iss, 'role': 'service_role'})}",
        "apikey": "sb_secret_not-a-key-of-this-project",
    }
    if target == "batch_import":
        response = client.post("/", json=[GOOD], headers=headers)
    else:
        response = client.get(
            "/", query_string={"timestamp": "2025-06-01T07:30:00Z"}, headers=headers
        )
    assert response.status_code == 401, response.get_data()[:300]
    # A Google issuer hands the check to the apikey; any other issuer leaves it to the token.
    expected = "invalid_secret_key" if iss == "accounts.google.com" else "bad_signature"
    assert json_body(response)["error"] == expected


HOSTILE_TOKENS = [
    '"eyJ\\ud800.a.b"',
    '"a.b.\\ud800"',
    '"sb_secret_\\udfff"',
    '"\\u0000"',
    '"' + "A" * 100_000 + '"',
]


def test_verify_service_jwt_survives_hostile_tokens(make_client: ClientFactory) -> None:
    client = make_client("verify_service_jwt")
    for token in HOSTILE_TOKENS:
        response = client.post(
            "/",
            data=('{"token": ' + token + "}").encode("utf-8", "surrogatepass"),
            content_type="application/json",
        )
        answer = contract.from_flask(response)
        assert answer.status in (401, 413), token[:40]
        assert contract.contract_problems(answer, "/verify_service_jwt", "post") == []
