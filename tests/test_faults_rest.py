"""Faults of the Data API under the REST sink, through the real batch_import HTTP handler.

The stand-in below answers the requests supabase-py sends, the way PostgREST documents them:
``POST /rest/v1/engagement_events`` honours ``Prefer: resolution=ignore-duplicates`` and
``on_conflict=id`` (without them an id already stored is a 409 ``23505``, as in PostgREST) and
returns the rows it inserted; the three functions the sink calls through ``/rest/v1/rpc/`` answer
as their SQL definitions do. Its table is a dict keyed by id, so a duplicate is detectable. On
top of that it can drop a connection before or after processing a request, answer a chosen
status with ``Retry-After``, hold a request past the caller's deadline, or drip its answer.
"""

from __future__ import annotations

import collections
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import json_http
from tests.conftest import AppFactory, json_body

SECRET = "rest-fault-test-jwt-secret-with-at-least-32-characters"
KEY = "service-role-key-for-rest-fault-tests"
TABLE_PATH = "/rest/v1/engagement_events"
UNKNOWN_USERS_PATH = "/rest/v1/rpc/engagement_unknown_user_ids"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"


@dataclass(frozen=True)
class Serve:
    """Process the request normally (to let earlier chunks through)."""


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer, before or after processing the request."""

    after_processing: bool


@dataclass(frozen=True)
class Answer:
    """Answer this instead of processing the request."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass(frozen=True)
class Hold:
    """Keep the request waiting until the test releases it, then process it (a late commit)."""


@dataclass(frozen=True)
class Drip:
    """Process the request, send the status line at once, then the body a byte at a time."""


Fault = Serve | Drop | Answer | Hold | Drip


@dataclass(frozen=True)
class Seen:
    path: str
    query: dict[str, list[str]]
    prefer: set[str]
    body: Any
    at: float


def postgrest_error(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "hint": None}


class StandIn:
    """A threaded HTTP server standing in for PostgREST, with scriptable faults per path."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.times_inserted: collections.Counter[str] = collections.Counter()
        self.seen: list[Seen] = []
        self.faults: dict[str, collections.deque[Fault]] = collections.defaultdict(
            collections.deque
        )
        self.release = threading.Event()
        # Set once a held or dripping answer has been written in full (never, if the caller
        # hung up first).
        self.answered_in_full = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def script(self, path: str, *faults: Fault) -> None:
        """The next requests to ``path`` meet these faults, in order; later ones are served."""
        self.faults[path].extend(faults)

    def writes(self) -> list[Seen]:
        return [s for s in self.seen if s.path == TABLE_PATH]

    # -- what PostgREST would do -----------------------------------------------------------

    def process(self, seen: Seen) -> tuple[int, Any]:
        with self._lock:
            if seen.path == TABLE_PATH:
                return self._insert(seen)
            if seen.path == UNKNOWN_USERS_PATH:
                return 200, []  # every user of these tests exists
            if seen.path == "/rest/v1/rpc/take_engagement_rate_limit":
                return 200, 0
            if seen.path == "/rest/v1/rpc/record_engagement_failures":
                return 200, len(seen.body["failures"])
        return 404, postgrest_error("PGRST202", "Could not find the function")

    def _insert(self, seen: Seen) -> tuple[int, Any]:
        sent: list[dict[str, Any]] = seen.body
        ignore = "resolution=ignore-duplicates" in seen.prefer and seen.query.get(
            "on_conflict"
        ) == ["id"]
        if not ignore and any(r["id"] in self.rows for r in sent):
            return 409, postgrest_error(
                "23505", 'duplicate key value violates unique constraint "engagement_events_pkey"'
            )
        inserted = []
        for row in sent:
            if row["id"] not in self.rows:
                self.rows[row["id"]] = row
                self.times_inserted[row["id"]] += 1
                inserted.append({"id": row["id"]})
        return 201, inserted if "return=representation" in seen.prefer else None

    # -- the server ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(
                    parts.path,
                    parse_qs(parts.query),
                    {p.strip() for p in self.headers.get("Prefer", "").split(",") if p.strip()},
                    json_http.read_body(self),
                    time.monotonic(),
                )
                with stand_in._lock:
                    stand_in.seen.append(seen)
                    queue = stand_in.faults.get(seen.path)
                    fault = queue.popleft() if queue else None
                with contextlib.suppress(OSError):  # the caller gave up on this request
                    self._serve(seen, fault)

            def _serve(self, seen: Seen, fault: Fault | None) -> None:
                if isinstance(fault, Drop):
                    if fault.after_processing:
                        stand_in.process(seen)
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(fault, Answer):
                    payload = fault.raw if fault.raw is not None else json.dumps(fault.body)
                    self._answer(fault.status, payload, fault.headers)
                    return
                if isinstance(fault, Hold):
                    stand_in.release.wait(timeout=30)
                    status, body = stand_in.process(seen)
                    self._answer(status, json.dumps(body))
                    stand_in.answered_in_full.set()
                    return
                status, body = stand_in.process(seen)
                if isinstance(fault, Drip):
                    self._drip(status, json.dumps(body).encode() + b" " * 100)
                    return
                self._answer(status, json.dumps(body))

            def _answer(
                self, status: int, payload: str | bytes, headers: dict[str, str] | None = None
            ) -> None:
                data = payload.encode() if isinstance(payload, str) else payload
                json_http.answer(self, status, data, headers)

            def _drip(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.flush()
                for position in range(len(data)):
                    if stand_in.release.is_set():
                        self.wfile.write(data[position:])
                        break
                    self.wfile.write(data[position : position + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
                stand_in.answered_in_full.set()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    thread = threading.Thread(target=server.server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()


ServeApp = Callable[..., FlaskClient]


@pytest.fixture
def serve(stand_in: StandIn, function_app: AppFactory) -> ServeApp:
    """A batch_import app (functions-framework) whose REST sink writes to the stand-in."""

    def factory(**env: str) -> FlaskClient:
        return function_app(
            "batch_import",
            SUPABASE_JWT_SECRET=SECRET,
            SUPABASE_URL=stand_in.url,
            SUPABASE_SERVICE_ROLE_KEY=KEY,
            DATABASE_URL=None,
            **env,
        ).test_client()

    return factory


def auth() -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode(
        {"role": "service_role", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256"
    )
    return {"Authorization": f"Bearer {token}"}


def batch(size: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": str(uuid.uuid4()),
            "user_id": ANA if i % 2 else BEN,
            "event_type": "steps_import",
            "timestamp": f"2025-06-01T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "value": {"steps": 1000 + i},
        }
        for i in range(size)
    ]


def assert_each_stored_once(stand_in: StandIn, events: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    assert set(stand_in.rows) == set(ids)
    assert all(stand_in.times_inserted[i] == 1 for i in ids)


def assert_every_write_ignores_duplicates(stand_in: StandIn) -> None:
    """What makes a retry safe: each write, first or repeated, is an upsert on id that ignores
    rows already there."""
    for write in stand_in.writes():
        assert "resolution=ignore-duplicates" in write.prefer
        assert write.query["on_conflict"] == ["id"]


def unavailable(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 503, response.json
    body = json_body(response)
    assert body["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) == body["retry_after"] >= 1
    assert KEY not in response.get_data(as_text=True)
    return body


# -- dropped connections ------------------------------------------------------------------------


def test_a_connection_dropped_before_the_write_is_retried_and_stores_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(20)
    stand_in.script(TABLE_PATH, Drop(after_processing=False))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert (json_body(response)["inserted"], json_body(response)["duplicates"]) == (20, 0)
    assert len(stand_in.writes()) == 2
    assert_each_stored_once(stand_in, events)


def test_a_write_whose_answer_was_lost_is_retried_without_a_duplicate(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(20)
    stand_in.script(TABLE_PATH, Drop(after_processing=True))

    response = serve().post("/", json=events, headers=auth())

    # The first attempt stored the rows; its answer never came, so the retry finds them there.
    assert response.status_code == 200, response.json
    assert (json_body(response)["inserted"], json_body(response)["duplicates"]) == (0, 20)
    assert len(stand_in.writes()) == 2
    assert_every_write_ignores_duplicates(stand_in)
    assert_each_stored_once(stand_in, events)


def test_a_lost_answer_in_the_middle_chunk_completes_the_batch_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(1_200)  # chunks of 500, 500, 200
    stand_in.script(TABLE_PATH, Serve(), Drop(after_processing=True))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert (json_body(response)["inserted"], json_body(response)["duplicates"]) == (700, 500)
    assert [len(w.body) for w in stand_in.writes()] == [500, 500, 500, 200]
    assert_every_write_ignores_duplicates(stand_in)
    assert_each_stored_once(stand_in, events)


def test_a_dropped_unknown_users_lookup_is_retried(stand_in: StandIn, serve: ServeApp) -> None:
    events = batch(10)
    stand_in.script(UNKNOWN_USERS_PATH, Drop(after_processing=False))

    response = serve().post("/", json=events, headers=auth())

    assert (response.status_code, json_body(response)["inserted"]) == (200, 10)
    assert len([s for s in stand_in.seen if s.path == UNKNOWN_USERS_PATH]) == 2
    assert_each_stored_once(stand_in, events)


def test_an_answer_that_is_not_the_rows_is_never_taken_for_duplicates(
    stand_in: StandIn, serve: ServeApp
) -> None:
    # A proxy in front of the Data API answered 200 with a page of its own: nothing was stored,
    # so the events must not be reported as already there.
    events = batch(10)
    stand_in.script(TABLE_PATH, Answer(200, raw=b"<html>maintenance</html>"))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert (json_body(response)["inserted"], json_body(response)["duplicates"]) == (10, 0)
    assert_each_stored_once(stand_in, events)


# -- 503 and 429 with Retry-After ---------------------------------------------------------------


@pytest.mark.parametrize(
    "refusal",
    [
        Answer(503, postgrest_error("PGRST001", "Database client error"), {"Retry-After": "1"}),
        Answer(429, {"message": "Too many requests"}, {"Retry-After": "1"}),
    ],
    ids=["503", "429"],
)
def test_retry_after_within_the_cap_is_waited_out_then_the_write_succeeds(
    stand_in: StandIn, serve: ServeApp, refusal: Answer
) -> None:
    events = batch(10)
    stand_in.script(TABLE_PATH, refusal)

    response = serve().post("/", json=events, headers=auth())

    assert (response.status_code, json_body(response)["inserted"]) == (200, 10)
    first, second = stand_in.writes()
    assert second.at - first.at >= 1.0  # the Retry-After of one second was honoured
    assert_each_stored_once(stand_in, events)


@pytest.mark.parametrize("status", [503, 429])
def test_a_retry_after_longer_than_the_cap_goes_back_to_the_caller_at_once(
    stand_in: StandIn, serve: ServeApp, status: int
) -> None:
    # Waiting 30 s inside the function would hold an instance for nothing: the caller is told.
    stand_in.script(TABLE_PATH, Answer(status, {"message": "later"}, {"Retry-After": "30"}))

    response = serve().post("/", json=batch(10), headers=auth())

    body = unavailable(response)
    assert body["retry_after"] == 30
    assert body["stored"] == 0
    assert len(stand_in.writes()) == 1
    assert stand_in.rows == {}


def test_a_retry_after_past_the_deadline_goes_back_to_the_caller_at_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    stand_in.script(
        TABLE_PATH, Answer(503, postgrest_error("PGRST000", "down"), {"Retry-After": "3"})
    )

    response = serve(TIME_BUDGET_SECONDS="2").post("/", json=batch(10), headers=auth())

    assert unavailable(response)["retry_after"] == 3
    assert len(stand_in.writes()) == 1


def test_persistent_503_gives_up_after_the_attempts_with_nothing_stored(
    stand_in: StandIn, serve: ServeApp
) -> None:
    stand_in.script(TABLE_PATH, *[Answer(503, postgrest_error("PGRST001", "down"))] * 10)

    response = serve().post("/", json=batch(10), headers=auth())

    body = unavailable(response)
    assert (body["store_code"], body["stored"]) == ("PGRST001", 0)
    assert len(stand_in.writes()) == 4
    assert stand_in.rows == {}


def test_a_failing_later_chunk_says_how_many_are_stored_and_the_retry_completes_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(1_200)
    client = serve()
    # The first chunk goes through; then the connection drops and the Data API stays down.
    stand_in.script(
        TABLE_PATH,
        Serve(),
        Drop(after_processing=False),
        *[Answer(503, postgrest_error("PGRST001", "down"))] * 9,
    )

    first = client.post("/", json=events, headers=auth())

    body = unavailable(first)
    assert body["stored"] == 500
    assert len(stand_in.rows) == 500
    stand_in.faults[TABLE_PATH].clear()  # the Data API is back
    again = client.post("/", json=events, headers=auth())
    assert again.status_code == 200, again.json
    assert (json_body(again)["inserted"], json_body(again)["duplicates"]) == (700, 500)
    assert_every_write_ignores_duplicates(stand_in)
    assert_each_stored_once(stand_in, events)


# -- too slow for the deadline ------------------------------------------------------------------


def test_a_data_api_slower_than_the_deadline_is_a_503_not_a_hang(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(10)
    client = serve(TIME_BUDGET_SECONDS="2")
    stand_in.script(TABLE_PATH, Hold())

    response = client.post("/", json=events, headers=auth())

    # The stand-in is still holding the request: the caller was answered without it.
    assert not stand_in.answered_in_full.is_set()
    body = unavailable(response)
    assert body["stored"] == 0
    # The Data API commits late; the caller's retry finds the rows and adds none.
    stand_in.release.set()
    for _ in range(500):
        if len(stand_in.rows) == 10:
            break
        time.sleep(0.01)
    again = client.post("/", json=events, headers=auth())
    retried = json_body(again)
    assert (again.status_code, retried["inserted"], retried["duplicates"]) == (200, 0, 10)
    assert_each_stored_once(stand_in, events)


def test_an_answer_dripping_in_past_the_deadline_is_a_503_not_a_hang(
    stand_in: StandIn, serve: ServeApp
) -> None:
    # Headers at once, then a byte every 0.1 s: each read is quick, the whole answer is not.
    events = batch(3)
    client = serve(TIME_BUDGET_SECONDS="2")
    stand_in.script(TABLE_PATH, Drip())

    response = client.post("/", json=events, headers=auth())

    assert not stand_in.answered_in_full.is_set()  # the caller did not wait for the last byte
    assert unavailable(response)["store_code"] == "timeout"
    stand_in.release.set()
    # The rows were stored before the answer began: the retry reports them, and adds none.
    again = client.post("/", json=events, headers=auth())
    retried = json_body(again)
    assert (again.status_code, retried["inserted"], retried["duplicates"]) == (200, 0, 3)
    assert_each_stored_once(stand_in, events)


# -- refusals that retrying cannot fix ----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, postgrest_error("PGRST102", "Empty or invalid json")),
        (
            400,
            postgrest_error(
                "23514",
                'new row for relation "engagement_events" violates check constraint',
                "Failing row contains (secret-payload-value).",
            ),
        ),
        (401, postgrest_error("PGRST301", "JWSError JWSInvalidSignature")),
        (403, postgrest_error("42501", "permission denied for table engagement_events")),
        (409, postgrest_error("23503", "insert or update violates foreign key constraint")),
    ],
    ids=["400-PGRST102", "400-23514", "401-PGRST301", "403-42501", "409-23503"],
)
def test_a_refusal_is_502_store_error_and_not_retried(
    stand_in: StandIn, serve: ServeApp, status: int, error: dict[str, Any]
) -> None:
    stand_in.script(TABLE_PATH, Answer(status, error))

    response = serve().post("/", json=batch(10), headers=auth())

    assert response.status_code == 502, response.json
    body = json_body(response)
    assert (body["error"], body["store_code"], body["stored"]) == ("store_error", error["code"], 0)
    assert "Retry-After" not in response.headers
    assert "secret-payload-value" not in response.get_data(as_text=True)
    assert len(stand_in.writes()) == 1


def test_a_refusal_of_a_later_chunk_says_how_many_are_stored(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(1_200)
    stand_in.script(TABLE_PATH, Serve(), Answer(401, postgrest_error("PGRST303", "JWT expired")))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 502, response.json
    assert (json_body(response)["store_code"], json_body(response)["stored"]) == ("PGRST303", 500)
    assert len(stand_in.writes()) == 2
    assert len(stand_in.rows) == 500
