"""Faults of the Data API under the REST sink, through the real batch_import HTTP handler.

The stand-in below answers the requests supabase-py sends: every write is
``POST /rest/v1/rpc/ingest_engagement_events``, answered the way that SQL function answers for
the cases these tests exercise (:meth:`StandIn.ingest`; it is not the function, whose full
rules are tested on the real database in tests/test_event_identity_sql.py), and the dead-letter
function answers how many failures it kept. Its table is a dict keyed by id that counts how
often each id was inserted, so a row stored twice is detectable. On top of that it can drop a
connection before or after processing a request, answer a chosen status with ``Retry-After``,
hold a request past the caller's deadline, or drip its answer.
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
from urllib.parse import urlsplit

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests import json_http
from tests.conftest import AppFactory, json_body
from tests.ingest_stand_in import IngestFunction, Stored

SECRET = "rest-fault-test-jwt-secret-with-at-least-32-characters"
KEY = "service-role-key-for-rest-fault-tests"
INGEST_PATH = "/rest/v1/rpc/ingest_engagement_events"
FAILURES_PATH = "/rest/v1/rpc/record_engagement_failures"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
NOBODY = "99999999-0000-4000-8000-000000000009"


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
    body: Any
    at: float


def postgrest_error(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "hint": None}


class StandIn:
    """A threaded HTTP server standing in for PostgREST, with scriptable faults per path."""

    def __init__(self) -> None:
        self.function = IngestFunction()
        self.function.unknown_users = {NOBODY}
        self.dead_letters: list[dict[str, Any]] = []
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
        return [s for s in self.seen if s.path == INGEST_PATH]

    # -- what the Data API would do --------------------------------------------------------

    def process(self, seen: Seen) -> tuple[int, Any]:
        with self._lock:
            if seen.path == INGEST_PATH:
                return 200, self.function(seen.body)
            if seen.path == FAILURES_PATH:
                self.dead_letters.extend(seen.body["failures"])
                return 200, len(seen.body["failures"])
            if seen.path == "/rest/v1/rpc/take_engagement_rate_limit":
                return 200, self.function.rate_wait
        return 404, postgrest_error("PGRST202", "Could not find the function")

    @property
    def rows(self) -> dict[str, Stored]:
        """What the stand-in's function has stored, by id."""
        return self.function.stored

    # -- the server ------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen = Seen(urlsplit(self.path).path, json_http.read_body(self), time.monotonic())
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


def counts(response: TestResponse) -> tuple[int, int, int, int]:
    """inserted, updated, deleted and duplicates of a batch_import answer."""
    body = json_body(response)
    return body["inserted"], body["updated"], body["deleted"], body["duplicates"]


def assert_each_stored_once(stand_in: StandIn, events: list[dict[str, Any]]) -> None:
    ids = [e["event_id"] for e in events]
    assert set(stand_in.rows) == set(ids)
    assert all(stand_in.function.times_inserted[i] == 1 for i in ids)


def unavailable(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 503, response.json
    body = json_body(response)
    assert body["error"] == "store_unavailable"
    assert int(response.headers["Retry-After"]) == body["retry_after"] >= 1
    assert KEY not in response.get_data(as_text=True)
    return body


# -- what the handler makes of the function's answer --------------------------------------------


def test_revisions_and_deletions_are_counted_in_the_response(
    stand_in: StandIn, serve: ServeApp
) -> None:
    client = serve()
    first = batch(3)
    for event in first:
        event["revision"] = 5
    assert client.post("/", json=first, headers=auth()).status_code == 200
    newer, older, gone = ({**e} for e in first)
    newer.update(revision=6, value={"steps": 9999})
    older.update(revision=4, value={"steps": 1})
    gone.update(deleted=True, value={})
    del gone["revision"]

    response = client.post("/", json=[newer, older, gone, *batch(1)], headers=auth())

    assert response.status_code == 200, response.json
    assert set(json_body(response)) == {
        "inserted",
        "updated",
        "deleted",
        "duplicates",
        "rejected",
        "request_id",
    }
    assert counts(response) == (1, 1, 1, 1)
    assert json_body(response)["rejected"] == []
    assert stand_in.rows[newer["event_id"]].value == {"steps": 9999}
    assert stand_in.rows[older["event_id"]].value == {"steps": 1000 + 1}
    assert stand_in.rows[gone["event_id"]].deleted


def test_unknown_users_and_taken_ids_are_rejected_at_their_request_positions_and_dead_lettered(
    stand_in: StandIn, serve: ServeApp
) -> None:
    client = serve()
    measurement = {
        "user_id": ANA,
        "event_type": "steps_import",
        "timestamp": "2025-06-02T00:00:00Z",
        "value": {
            "steps": 7000,
            "source": "garmin",
            "period_start": "2025-06-01T00:00:00+02:00",
            "period_end": "2025-06-02T00:00:00+02:00",
        },
    }
    # Ana's measurement is sent once alone; then its derived id is made Ben's, as an earlier
    # event of Ben's with that event_id would have left it.
    assert counts(client.post("/", json=[measurement], headers=auth())) == (1, 0, 0, 0)
    (derived,) = stand_in.rows
    stand_in.rows[derived].user_id = BEN
    bens = batch(1)[0]  # an event of Ben's (index 0 is even)
    assert counts(client.post("/", json=[bens], headers=auth())) == (1, 0, 0, 0)
    events = batch(1_200)  # chunks of 500, 500 and 198 valid events
    events[0] = {**events[0], "event_type": "Not-Snake-Case"}  # invalid: never sent
    events[2] = {**events[2], "event_id": "not-a-uuid"}
    events[700] = {**events[700], "user_id": NOBODY}
    events[1_100] = {**events[1_100], "user_id": ANA, "event_id": bens["event_id"]}
    events[1_150] = measurement

    response = client.post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    rejected = json_body(response)["rejected"]
    assert [(r["index"], [e["path"] for e in r["errors"]]) for r in rejected] == [
        (0, ["/event_type"]),
        (2, ["/event_id"]),
        (700, ["/user_id"]),
        (1_100, ["/event_id"]),
        (1_150, [""]),
    ]
    assert rejected[3]["event_id"] == bens["event_id"]
    assert "another user" in rejected[4]["errors"][0]["message"]
    assert counts(response) == (1_195, 0, 0, 0)
    # The request positions reached the sink as positions among the valid events.
    assert [len(w.body["events"]) for w in stand_in.writes()[2:]] == [500, 500, 198]
    assert stand_in.rows[bens["event_id"]].user_id == BEN
    assert stand_in.rows[derived].user_id == BEN
    assert events[700]["event_id"] not in stand_in.rows
    kept = stand_in.dead_letters[-5:]
    assert [(f["index"], f["errors"][0]["path"]) for f in kept] == [
        (0, "/event_type"),
        (2, "/event_id"),
        (700, "/user_id"),
        (1_100, "/event_id"),
        (1_150, ""),
    ]
    assert json.loads(kept[4]["event"]) == measurement


def test_atomic_with_a_taken_id_stores_nothing_and_is_422(
    stand_in: StandIn, serve: ServeApp
) -> None:
    client = serve()
    bens = batch(1)[0]
    client.post("/", json=[bens], headers=auth())
    events = batch(10)
    events[3] = {**events[3], "user_id": ANA, "event_id": bens["event_id"]}

    response = client.post("/", json={"events": events, "mode": "atomic"}, headers=auth())

    assert response.status_code == 422, response.json
    assert counts(response) == (0, 0, 0, 0)
    assert [r["index"] for r in json_body(response)["rejected"]] == [3]
    assert list(stand_in.rows) == [bens["event_id"]]
    assert len(stand_in.writes()) == 2  # one request for the whole atomic batch
    assert stand_in.writes()[1].body["atomic"] is True


def test_the_rate_limit_is_taken_with_the_first_chunk_only(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(1_200)

    response = serve(RATE_LIMIT_REQUESTS_PER_MINUTE="60").post("/", json=events, headers=auth())

    assert counts(response) == (1_200, 0, 0, 0)
    first, *later = stand_in.writes()
    assert (first.body["rate_requests_per_minute"], first.body["rate_events"]) == (60, 1_200)
    assert first.body["rate_caller"]
    assert len(later) == 2
    assert not any(key.startswith("rate_") for w in later for key in w.body)


def test_a_caller_over_its_rate_limit_gets_429_and_nothing_is_stored(
    stand_in: StandIn, serve: ServeApp
) -> None:
    stand_in.function.rate_wait = 17

    response = serve().post("/", json=batch(1_200), headers=auth())

    assert response.status_code == 429, response.json
    assert response.headers["Retry-After"] == "17"
    assert len(stand_in.writes()) == 1
    assert stand_in.rows == {}


# -- dropped connections ------------------------------------------------------------------------


def test_a_connection_dropped_before_the_write_is_retried_and_stores_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(20)
    stand_in.script(INGEST_PATH, Drop(after_processing=False))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert counts(response) == (20, 0, 0, 0)
    assert len(stand_in.writes()) == 2
    assert_each_stored_once(stand_in, events)


def test_a_write_whose_answer_was_lost_is_retried_without_a_duplicate(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(20)
    stand_in.script(INGEST_PATH, Drop(after_processing=True))

    response = serve().post("/", json=events, headers=auth())

    # The first attempt stored the rows; its answer never came, so the retry finds them there.
    assert response.status_code == 200, response.json
    assert counts(response) == (0, 0, 0, 20)
    first, retry = stand_in.writes()
    assert retry.body == first.body  # the same events with the same ids
    assert_each_stored_once(stand_in, events)


def test_a_lost_answer_in_the_middle_chunk_completes_the_batch_once(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(1_200)  # chunks of 500, 500, 200
    stand_in.script(INGEST_PATH, Serve(), Drop(after_processing=True))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert counts(response) == (700, 0, 0, 500)
    writes = stand_in.writes()
    assert [len(w.body["events"]) for w in writes] == [500, 500, 500, 200]
    assert writes[2].body == writes[1].body
    assert [e["index"] for e in writes[2].body["events"]] == list(range(500, 1_000))
    assert_each_stored_once(stand_in, events)


def test_a_dropped_dead_letter_call_is_retried(stand_in: StandIn, serve: ServeApp) -> None:
    events = batch(10)
    events[4] = {**events[4], "user_id": NOBODY}
    stand_in.script(FAILURES_PATH, Drop(after_processing=False))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert [r["index"] for r in json_body(response)["rejected"]] == [4]
    assert [f["index"] for f in stand_in.dead_letters] == [4]
    assert len([s for s in stand_in.seen if s.path == FAILURES_PATH]) == 2


@pytest.mark.parametrize(
    "answer",
    [
        Answer(200, raw=b"<html>maintenance</html>"),
        Answer(200, []),  # the old table write's "no row inserted"
        Answer(200, raw=b""),
    ],
    ids=["html", "empty-rows", "empty"],
)
def test_an_answer_without_the_counts_is_never_taken_for_duplicates(
    stand_in: StandIn, serve: ServeApp, answer: Answer
) -> None:
    # A proxy in front of the Data API answered 200 with a page of its own: nothing was stored,
    # so the events must not be reported as already there.
    events = batch(10)
    stand_in.script(INGEST_PATH, answer)

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert counts(response) == (10, 0, 0, 0)
    assert len(stand_in.writes()) == 2
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
    stand_in.script(INGEST_PATH, refusal)

    response = serve().post("/", json=events, headers=auth())

    assert (response.status_code, counts(response)) == (200, (10, 0, 0, 0))
    first, second = stand_in.writes()
    assert second.at - first.at >= 1.0  # the Retry-After of one second was honoured
    assert_each_stored_once(stand_in, events)


@pytest.mark.parametrize("status", [503, 429])
def test_a_retry_after_longer_than_the_cap_goes_back_to_the_caller_at_once(
    stand_in: StandIn, serve: ServeApp, status: int
) -> None:
    # Waiting 30 s inside the function would hold an instance for nothing: the caller is told.
    stand_in.script(INGEST_PATH, Answer(status, {"message": "later"}, {"Retry-After": "30"}))

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
        INGEST_PATH, Answer(503, postgrest_error("PGRST000", "down"), {"Retry-After": "3"})
    )

    response = serve(TIME_BUDGET_SECONDS="2").post("/", json=batch(10), headers=auth())

    assert unavailable(response)["retry_after"] == 3
    assert len(stand_in.writes()) == 1


def test_persistent_503_gives_up_after_the_attempts_with_nothing_stored(
    stand_in: StandIn, serve: ServeApp
) -> None:
    stand_in.script(INGEST_PATH, *[Answer(503, postgrest_error("PGRST001", "down"))] * 10)

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
        INGEST_PATH,
        Serve(),
        Drop(after_processing=False),
        *[Answer(503, postgrest_error("PGRST001", "down"))] * 9,
    )

    first = client.post("/", json=events, headers=auth())

    body = unavailable(first)
    assert body["stored"] == 500
    assert len(stand_in.rows) == 500
    stand_in.faults[INGEST_PATH].clear()  # the Data API is back
    again = client.post("/", json=events, headers=auth())
    assert again.status_code == 200, again.json
    assert counts(again) == (700, 0, 0, 500)
    assert_each_stored_once(stand_in, events)


def test_a_failing_dead_letter_store_after_the_write_says_how_many_are_stored(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(10)
    events[4] = {**events[4], "user_id": NOBODY}
    stand_in.script(FAILURES_PATH, *[Answer(503, postgrest_error("PGRST001", "down"))] * 10)

    response = serve().post("/", json=events, headers=auth())

    assert unavailable(response)["stored"] == 9
    assert len(stand_in.rows) == 9


# -- too slow for the deadline ------------------------------------------------------------------


def test_a_data_api_slower_than_the_deadline_is_a_503_not_a_hang(
    stand_in: StandIn, serve: ServeApp
) -> None:
    events = batch(10)
    client = serve(TIME_BUDGET_SECONDS="2")
    stand_in.script(INGEST_PATH, Hold())

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
    assert (again.status_code, counts(again)) == (200, (0, 0, 0, 10))
    assert_each_stored_once(stand_in, events)


def test_an_answer_dripping_in_past_the_deadline_is_a_503_not_a_hang(
    stand_in: StandIn, serve: ServeApp
) -> None:
    # Headers at once, then a byte every 0.1 s: each read is quick, the whole answer is not.
    events = batch(3)
    client = serve(TIME_BUDGET_SECONDS="2")
    stand_in.script(INGEST_PATH, Drip())

    response = client.post("/", json=events, headers=auth())

    assert not stand_in.answered_in_full.is_set()  # the caller did not wait for the last byte
    assert unavailable(response)["store_code"] == "timeout"
    stand_in.release.set()
    # The rows were stored before the answer began: the retry reports them, and adds none.
    again = client.post("/", json=events, headers=auth())
    assert (again.status_code, counts(again)) == (200, (0, 0, 0, 3))
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
        (403, postgrest_error("42501", "permission denied for function ingest_engagement_events")),
        (404, postgrest_error("PGRST202", "Could not find the function")),
        (409, postgrest_error("23503", "insert or update violates foreign key constraint")),
    ],
    ids=["400-PGRST102", "400-23514", "401-PGRST301", "403-42501", "404-PGRST202", "409-23503"],
)
def test_a_refusal_is_502_store_error_and_not_retried(
    stand_in: StandIn, serve: ServeApp, status: int, error: dict[str, Any]
) -> None:
    stand_in.script(INGEST_PATH, Answer(status, error))

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
    stand_in.script(INGEST_PATH, Serve(), Answer(401, postgrest_error("PGRST303", "JWT expired")))

    response = serve().post("/", json=events, headers=auth())

    assert response.status_code == 502, response.json
    assert (json_body(response)["store_code"], json_body(response)["stored"]) == ("PGRST303", 500)
    assert len(stand_in.writes()) == 2
    assert len(stand_in.rows) == 500
