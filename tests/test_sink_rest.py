"""The REST sink against a local stand-in for PostgREST: the exact request supabase-py sends,
the counts read from the write function's answer, chunking, which answers are retried and which
are final, and the time budget.

Every write is ``POST /rest/v1/rpc/ingest_engagement_events``. The stand-in answers it with the
function's documented shape for the cases these tests exercise (:class:`IngestFunction`), and
any other answer PostgREST gives (``{"code", "message", "details", "hint"}``, statuses,
``Retry-After``) when a test scripts one. It is not the function: the full rules are tested on
the real database in tests/test_event_identity_sql.py, and the last test here replays the
requests the sink sent to the real function to check that it answers them as the stand-in did.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from functions.errors import StoreError, StoreUnavailable
from functions.sinks import FailureRecord, RateLimit, WriteResult
from functions.sinks.rest import RestSink
from tests import json_http, sink_rows
from tests.conftest import Database
from tests.ingest_stand_in import IngestFunction, counts
from tests.sink_rows import ANA, BEN, NOBODY, Row, soon

KEY = "service-role-key-for-tests"
INGEST_PATH = "/rest/v1/rpc/ingest_engagement_events"
RATE = RateLimit(caller="secret_key:abc", events=7, requests_per_minute=600, events_per_minute=0)


def row(user: uuid.UUID = ANA, **changes: Any) -> Row:
    """A steps_import row unless told otherwise."""
    return sink_rows.row(
        user, **{"event_type": "steps_import", "value": {"steps": 8421}, **changes}
    )


def measured(user: uuid.UUID = ANA, day: str = "2024-11-03", **changes: Any) -> Row:
    """A steps_import row without id: the database derives it from its identity text."""
    identity = json.dumps([str(user), "steps_import", {"day": day, "source": "garmin"}])
    return row(user, id=None, identity=identity, **changes)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    raw: bytes | None = None
    """Sent as the body instead of ``body``'s JSON."""


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    answer: Any = None
    """What the stand-in's function answered (None for a scripted reply)."""


class StandIn:
    """Records every request; answers the write function with :class:`IngestFunction` unless
    a scripted reply is queued for that request."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.function = IngestFunction()
        self.other_rpc: dict[str, Reply] = {}  # answers of the other functions, by name
        self.writes: list[Reply | None] = []  # the n-th write gets writes[n] if given
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    def answer(self, seen: Seen) -> Reply:
        with self._lock:
            name = seen.path.removeprefix("/rest/v1/rpc/")
            if name in self.other_rpc:
                self.seen.append(seen)
                return self.other_rpc[name]
            if seen.path != INGEST_PATH:
                self.seen.append(seen)
                return Reply(404, postgrest_error("PGRST202", "Could not find the function"))
            index = len(self.requests_to(INGEST_PATH))
            scripted = self.writes[index] if index < len(self.writes) else None
            if scripted is not None:
                self.seen.append(seen)
                return scripted
            answer = self.function(seen.body)
            self.seen.append(Seen(seen.method, seen.path, seen.headers, seen.body, answer))
            return Reply(200, answer)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                seen = Seen(
                    "POST",
                    urlsplit(self.path).path,
                    {k.lower(): v for k, v in self.headers.items()},
                    json_http.read_body(self),
                )
                reply = stand_in.answer(seen)
                time.sleep(reply.delay)
                payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                with contextlib.suppress(OSError):  # the client gave up (its deadline)
                    json_http.answer(self, reply.status, payload, reply.headers)

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
        server.server.shutdown()
        server.server.server_close()


@pytest.fixture
def sink(stand_in: StandIn) -> Iterator[RestSink]:
    sink = RestSink(stand_in.url, KEY, chunk_size=3, backoff_base_s=0.01, backoff_cap_s=0.05)
    try:
        yield sink
    finally:
        sink.close()


def postgrest_error(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "hint": None}


def bodies(stand_in: StandIn) -> list[Any]:
    return [seen.body for seen in stand_in.requests_to(INGEST_PATH)]


# -- the request ---------------------------------------------------------------------------------


def test_the_write_is_one_rpc_request_as_supabase_py_sends_it(
    stand_in: StandIn, sink: RestSink
) -> None:
    event, other = row(value={"steps": 8421, "source": "garmin"}), row(BEN)

    result = sink.write([event, other], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0)
    (write,) = stand_in.seen  # nothing else: no table write, no lookup of unknown users
    assert (write.method, write.path) == ("POST", INGEST_PATH)
    assert write.headers["apikey"] == KEY
    assert write.headers["authorization"] == f"Bearer {KEY}"
    assert write.headers["content-profile"] == "public"  # the schema PostgREST looks in
    assert write.headers["content-type"].startswith("application/json")
    assert write.body == {
        "events": [
            {
                "index": 0,
                "id": str(event.id),
                "user_id": str(ANA),
                "timestamp": "2024-11-03T06:30:15.123456+00:00",
                "event_type": "steps_import",
                "value": {"steps": 8421, "source": "garmin"},
            },
            {
                "index": 1,
                "id": str(other.id),
                "user_id": str(BEN),
                "timestamp": "2024-11-03T06:30:15.123456+00:00",
                "event_type": "steps_import",
                "value": {"steps": 8421},
            },
        ],
        "atomic": False,
    }


def test_an_event_without_id_sends_its_identity_revision_and_deletion(
    stand_in: StandIn, sink: RestSink
) -> None:
    revised = measured(revision=1_733_011_200_000)
    gone = measured(day="2024-11-04", deleted=True)

    sink.write([revised, gone], atomic=False, deadline=soon())

    ((first, second),) = (body["events"] for body in bodies(stand_in))
    assert "id" not in first
    assert "id" not in second
    assert (first["identity"], first["revision"]) == (revised.identity, 1_733_011_200_000)
    assert "deleted" not in first
    assert (second["identity"], second["deleted"]) == (gone.identity, True)
    assert "revision" not in second


def test_the_rate_limit_rides_on_the_write(stand_in: StandIn, sink: RestSink) -> None:
    sink.write([row(), row(BEN)], atomic=False, deadline=soon(), rate=RATE)

    (body,) = bodies(stand_in)
    assert {k: v for k, v in body.items() if k != "events"} == {
        "atomic": False,
        "rate_caller": "secret_key:abc",
        "rate_requests_per_minute": 600,
        "rate_events_per_minute": 0,
        "rate_events": 7,
    }


def test_a_refusal_of_the_rate_limit_writes_nothing_and_says_how_long_to_wait(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.function.rate_wait = 17

    result = sink.write([row() for _ in range(7)], atomic=False, deadline=soon(), rate=RATE)

    assert result.retry_after == 17
    assert result.written == 0
    assert len(bodies(stand_in)) == 1  # the later chunks were not sent
    assert stand_in.function.stored == {}


# -- counts --------------------------------------------------------------------------------------


def test_counts_are_the_functions_answer(stand_in: StandIn, sink: RestSink) -> None:
    # Whatever the batch, the sink reports what the database says it did.
    stand_in.writes = [
        Reply(200, counts(inserted=1, updated=2, deleted=3, duplicates=4, conflicts=[0]))
    ]

    result = sink.write([row()], atomic=False, deadline=soon())

    assert result == WriteResult(
        inserted=1, duplicates=4, updated=2, deleted=3, unknown_users=(), conflicts=(0,)
    )
    assert result.written == 10


def test_inserted_updated_deleted_and_duplicates(stand_in: StandIn, sink: RestSink) -> None:
    kept, revised, removed = row(revision=5), measured(revision=5), row()
    sink.write([kept, revised, removed], atomic=False, deadline=soon())

    result = sink.write(
        [
            row(),  # new
            row(id=kept.id, revision=4),  # older than the stored version
            measured(revision=6),  # newer
            row(id=removed.id, deleted=True),
            measured(day="2024-11-05", deleted=True),  # a deletion of a row never stored
        ],
        atomic=False,
        deadline=soon(),
    )

    assert result == WriteResult(inserted=1, duplicates=1, updated=1, deleted=2)


def test_a_repeated_batch_is_all_duplicates(stand_in: StandIn, sink: RestSink) -> None:
    batch = [row(), row(BEN), measured(), measured(BEN)]
    first = sink.write(batch, atomic=False, deadline=soon())

    again = sink.write(batch, atomic=False, deadline=soon())

    assert first == WriteResult(inserted=4, duplicates=0)
    assert again == WriteResult(inserted=0, duplicates=4)
    assert len(stand_in.function.stored) == 4


def test_unknown_users_and_taken_ids_are_reported_at_their_positions(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.function.unknown_users = {str(NOBODY)}
    bens = row(BEN)
    sink.write([bens], atomic=False, deadline=soon())

    result = sink.write([row(), row(NOBODY), row(ANA, id=bens.id)], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=1, duplicates=0, unknown_users=(1,), conflicts=(2,))
    assert stand_in.function.stored[str(bens.id)].user_id == str(BEN)
    assert len(stand_in.function.stored) == 2


def test_atomic_with_an_unknown_user_or_a_taken_id_writes_nothing(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.function.unknown_users = {str(NOBODY)}
    bens = row(BEN)
    sink.write([bens], atomic=False, deadline=soon())

    result = sink.write(
        [row(), row(NOBODY), row(), row(ANA, id=bens.id)], atomic=True, deadline=soon()
    )

    assert result == WriteResult(inserted=0, duplicates=0, unknown_users=(1,), conflicts=(3,))
    assert list(stand_in.function.stored) == [str(bens.id)]


# -- chunks --------------------------------------------------------------------------------------


def test_partial_writes_go_in_chunks_numbered_across_the_batch(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY)  # chunks of 500, the default
    batch = [row() for _ in range(1201)]

    result = sink.write(batch, atomic=False, deadline=soon(), rate=RATE)
    sink.close()

    sent = bodies(stand_in)
    assert [len(body["events"]) for body in sent] == [500, 500, 201]
    assert [e["index"] for body in sent for e in body["events"]] == list(range(1201))
    assert [e["id"] for body in sent for e in body["events"]] == [str(r.id) for r in batch]
    assert all(body["atomic"] is False for body in sent)
    # The rate limit is taken once per request: with the first chunk only.
    assert ["rate_caller" in body for body in sent] == [True, False, False]
    assert sent[0]["rate_events"] == 7
    assert result == WriteResult(inserted=1201, duplicates=0)


def test_positions_from_later_chunks_are_the_batchs(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.function.unknown_users = {str(NOBODY)}
    bens = row(BEN)
    sink.write([bens], atomic=False, deadline=soon())
    batch = [row(), row(NOBODY), row(), row(), row(NOBODY), row(), row(), row(ANA, id=bens.id)]

    result = sink.write(batch, atomic=False, deadline=soon())  # chunks of 3

    assert [len(body["events"]) for body in bodies(stand_in)[1:]] == [3, 3, 2]
    assert result == WriteResult(inserted=5, duplicates=0, unknown_users=(1, 4), conflicts=(7,))


def test_versions_of_one_id_share_a_chunk_and_are_decided_once(
    stand_in: StandIn, sink: RestSink, db: Database
) -> None:
    """Chunks never split the events of one id: the write path decides them together, as
    for a batch written in one call, so both sinks count them alike (chunks of 3 here)."""
    older = row(revision=4)
    measurement = "identity text of one step count"
    batch = [
        older,
        row(id=None, identity=measurement, revision=1),
        row(),
        row(),
        row(id=older.id, revision=6),
        row(id=None, identity=measurement, revision=2),
    ]

    sink.write(batch, atomic=False, deadline=soon())

    sent = bodies(stand_in)
    assert [[e["index"] for e in body["events"]] for body in sent] == [[0, 4], [1, 5, 2], [3]]
    with db.connect() as conn:
        chunked = [call_as_postgrest(conn, body) for body in sent]
    assert sum(answer["inserted"] for answer in chunked) == 4
    assert sum(answer["updated"] for answer in chunked) == 0
    assert sum(answer["duplicates"] for answer in chunked) == 2


def test_counts_of_all_chunks_are_added_up(stand_in: StandIn, sink: RestSink) -> None:
    old = [row(revision=1) for _ in range(4)]
    sink.write(old, atomic=False, deadline=soon())
    batch = [
        row(id=old[0].id, revision=2),
        row(),
        row(id=old[1].id),
        row(id=old[2].id, deleted=True),
        row(id=old[3].id, revision=9),
        row(),
        row(),
    ]

    result = sink.write(batch, atomic=False, deadline=soon())

    assert len(bodies(stand_in)) == 2 + 3
    assert result == WriteResult(inserted=3, duplicates=1, updated=2, deleted=1)


def test_an_atomic_write_is_one_request(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY, chunk_size=500)

    result = sink.write([row() for _ in range(1201)], atomic=True, deadline=soon(), rate=RATE)
    sink.close()

    (body,) = bodies(stand_in)
    assert len(body["events"]) == 1201
    assert (body["atomic"], body["rate_caller"]) == (True, RATE.caller)
    assert result.inserted == 1201


# -- answers retried, answers final --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (
            400,
            postgrest_error(
                "23514",
                'new row for relation "engagement_events" violates check constraint',
                "Failing row contains (secret diagnosis).",
            ),
        ),
        (400, postgrest_error("22023", 'invalid input syntax for type uuid: "secret diagnosis"')),
        (401, postgrest_error("PGRST301", "JWSError JWSInvalidSignature")),
        (401, postgrest_error("PGRST303", "JWT expired")),
        (403, postgrest_error("42501", "permission denied for function ingest_engagement_events")),
        (404, postgrest_error("PGRST202", "Could not find the function")),
        (
            409,
            postgrest_error(
                "23505",
                "duplicate key value violates unique constraint",
                "Key (id)=(secret diagnosis) already exists.",
            ),
        ),
    ],
    ids=[
        "400-23514",
        "400-22023",
        "401-PGRST301",
        "401-PGRST303",
        "403-42501",
        "404-PGRST202",
        "409-23505",
    ],
)
def test_refusals_are_final_and_keep_postgrest_code(
    stand_in: StandIn, sink: RestSink, status: int, error: dict[str, Any]
) -> None:
    stand_in.writes = [Reply(status, error)]

    with pytest.raises(StoreError) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert not isinstance(caught.value, StoreUnavailable)
    assert (caught.value.code, caught.value.stored) == (error["code"], 0)
    assert len(bodies(stand_in)) == 1
    assert "secret diagnosis" not in f"{caught.value} {caught.value.details}"
    assert KEY not in str(caught.value)


@pytest.mark.parametrize(
    "failure",
    [
        Reply(500, postgrest_error("XX000", "internal error")),
        Reply(503, postgrest_error("PGRST000", "Could not connect"), {"Retry-After": "0"}),
        Reply(503, postgrest_error("PGRST001", "Database client error")),
        Reply(503, postgrest_error("PGRST002", "Could not query the schema cache")),
        Reply(504, postgrest_error("PGRST003", "Timed out acquiring connection")),
        Reply(502, raw=b"<html>Bad Gateway</html>"),
        Reply(408, None),
        Reply(429, {"message": "Too many requests"}, {"Retry-After": "0"}),
    ],
    ids=[
        "500",
        "503-PGRST000",
        "503-PGRST001",
        "503-PGRST002",
        "504-PGRST003",
        "502-html",
        "408",
        "429",
    ],
)
def test_transient_answers_are_retried_until_success(
    stand_in: StandIn, sink: RestSink, failure: Reply
) -> None:
    stand_in.writes = [failure, failure]

    result = sink.write([row(), row(BEN)], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0)
    assert len(bodies(stand_in)) == 3


@pytest.mark.parametrize(
    "success",
    [
        Reply(200, raw=b"<html>maintenance</html>"),
        Reply(200, []),  # what the old table write answered
        Reply(200, {"message": "ok"}),
        Reply(200, raw=b""),
        Reply(204, raw=b""),
    ],
    ids=["html", "rows", "object-without-counts", "empty", "204"],
)
def test_a_success_without_the_counts_is_retried_never_counted(
    stand_in: StandIn, sink: RestSink, success: Reply
) -> None:
    stand_in.writes = [success]

    result = sink.write([row(), row(BEN)], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0)
    assert len(bodies(stand_in)) == 2


def test_answers_without_the_counts_give_up_as_unavailable(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.writes = [Reply(200, raw=b"<html>maintenance</html>")] * 10

    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert (caught.value.code, caught.value.stored) == ("bad_answer", 0)
    assert len(bodies(stand_in)) == 4


@pytest.mark.parametrize("form", ["seconds", "http-date"])
def test_retry_after_is_honoured(stand_in: StandIn, sink: RestSink, form: str) -> None:
    wait = "2" if form == "seconds" else email.utils.formatdate(time.time() + 3, usegmt=True)
    stand_in.writes = [Reply(429, {"message": "Too many requests"}, {"Retry-After": wait})]

    started = time.monotonic()
    result = sink.write([row()], atomic=False, deadline=soon())

    assert result.inserted == 1
    assert time.monotonic() - started >= 1.9  # a date 3 s ahead, in whole seconds: 2 to 3 s
    assert len(bodies(stand_in)) == 2


def test_a_retry_after_beyond_the_cap_gives_up_at_once(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.writes = [Reply(503, postgrest_error("PGRST000", "down"), {"Retry-After": "30"})]

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon(60))

    assert time.monotonic() - started < 1
    assert (caught.value.code, caught.value.retry_after) == ("PGRST000", 30)
    assert len(bodies(stand_in)) == 1


def test_a_retry_after_past_the_deadline_gives_up_at_once(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.writes = [Reply(503, postgrest_error("PGRST001", "down"), {"Retry-After": "3"})]

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon(2))

    assert time.monotonic() - started < 1
    assert caught.value.retry_after == 3
    assert len(bodies(stand_in)) == 1


def test_retries_stop_after_max_attempts(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.writes = [Reply(503, postgrest_error("PGRST001", "down"))] * 10

    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert (caught.value.code, caught.value.stored) == ("PGRST001", 0)
    assert caught.value.retry_after >= 1
    assert len(bodies(stand_in)) == 4
    assert stand_in.function.stored == {}


def test_a_failing_later_chunk_reports_what_earlier_chunks_stored(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY, max_attempts=3, backoff_base_s=0.01)
    stand_in.function.unknown_users = {str(NOBODY)}
    already = row()
    sink.write([already], atomic=False, deadline=soon())
    # The first chunk: 497 new, one already stored, two of an unknown user (not stored).
    batch = [already, row(NOBODY), row(NOBODY)] + [row() for _ in range(497 + 700)]
    stand_in.writes = [None, None] + [Reply(503, postgrest_error("PGRST001", "down"))] * 3

    with pytest.raises(StoreUnavailable) as caught:
        sink.write(batch, atomic=False, deadline=soon())
    sink.close()

    assert caught.value.stored == 498  # the duplicate counts: it is stored
    assert [len(body["events"]) for body in bodies(stand_in)[1:]] == [500, 500, 500, 500]
    assert len(stand_in.function.stored) == 498


def test_a_refused_later_chunk_reports_what_earlier_chunks_stored(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY)
    stand_in.writes = [None, Reply(401, postgrest_error("PGRST303", "JWT expired"))]

    with pytest.raises(StoreError) as caught:
        sink.write([row() for _ in range(1201)], atomic=False, deadline=soon())
    sink.close()

    assert not isinstance(caught.value, StoreUnavailable)
    assert (caught.value.code, caught.value.stored) == ("PGRST303", 500)
    assert len(bodies(stand_in)) == 2


# -- the network and the time budget -------------------------------------------------------------


def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sink = RestSink(f"http://127.0.0.1:{closed_port}", KEY, backoff_base_s=0.01)

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon())
    sink.close()

    assert caught.value.code == "network_error"
    assert time.monotonic() - started < 2
    assert KEY not in str(caught.value)


def test_a_slow_server_fails_before_the_deadline(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.writes = [Reply(200, counts(inserted=1), delay=3.0)] * 4

    deadline = soon(1.0)
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=deadline)

    assert time.monotonic() < deadline
    assert caught.value.code in {"timeout", "deadline"}
    assert caught.value.stored == 0


def test_a_spent_budget_sends_nothing(stand_in: StandIn, sink: RestSink) -> None:
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon(0.1))

    assert caught.value.code == "deadline"
    assert stand_in.seen == []


# -- the other functions -------------------------------------------------------------------------


def test_failures_go_to_the_dead_letter_function_in_one_call(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.other_rpc["record_engagement_failures"] = Reply(200, 2)
    failures = [
        FailureRecord(
            request_id="req-1",
            credential_type="secret_key",
            index=index,
            event=json.dumps({"user_id": str(ANA), "event_type": "Bad"}),
            errors=({"path": "/event_type", "message": "not lower snake case"},),
            user_id=str(ANA),
        )
        for index in (1, 4)
    ]
    assert sink.record_failures(failures, deadline=soon()) == 2
    (sent,) = stand_in.requests_to("/rest/v1/rpc/record_engagement_failures")
    assert sent.body == {"failures": [f.as_json() for f in failures]}
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sink.record_failures([], deadline=soon()) == 0
    assert len(stand_in.requests_to("/rest/v1/rpc/record_engagement_failures")) == 1


def test_rate_limit_is_asked_of_the_database_and_its_wait_returned(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.other_rpc["take_engagement_rate_limit"] = Reply(200, 17)
    wait = sink.take_rate_limit(
        "secret_key:abc", 40, requests_per_minute=600, events_per_minute=0, deadline=soon()
    )
    assert wait == 17
    (sent,) = stand_in.requests_to("/rest/v1/rpc/take_engagement_rate_limit")
    assert sent.body == {
        "caller": "secret_key:abc",
        "events": 40,
        "requests_per_minute": 600,
        "events_per_minute": 0,
    }


def test_a_failing_dead_letter_store_is_unavailable(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.other_rpc["record_engagement_failures"] = Reply(
        503, postgrest_error("PGRST001", "Database client error")
    )
    failure = FailureRecord("req", "legacy_jwt", 0, "{}", ())
    with pytest.raises(StoreUnavailable):
        sink.record_failures([failure], deadline=soon())


# -- the function behind the rpc, on the real local database -------------------------------------

# The parameters of public.ingest_engagement_events as PostgREST reads them from the function's
# signature; it calls the function with named arguments taken from the body's keys.
PARAMETER_TYPES = {
    "events": "jsonb",
    "atomic": "boolean",
    "rate_caller": "text",
    "rate_requests_per_minute": "integer",
    "rate_events_per_minute": "integer",
    "rate_events": "integer",
}


def call_as_postgrest(conn: psycopg.Connection[Any], body: dict[str, Any]) -> Any:
    """Call the function with ``body`` the way PostgREST does for an rpc POST: the body's keys
    as named arguments, each read from the JSON object with the parameter's type, in a
    transaction of its own as service_role."""
    names = list(body)
    query = sql.SQL(
        "select public.ingest_engagement_events({arguments})"
        " from pg_catalog.jsonb_to_record(%s) as r({columns})"
    ).format(
        arguments=sql.SQL(", ").join(
            sql.SQL("{name} => r.{name}").format(name=sql.Identifier(n)) for n in names
        ),
        columns=sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(PARAMETER_TYPES[n])) for n in names
        ),
    )
    with conn.transaction():
        conn.execute("set local role service_role")
        answer = conn.execute(query, (Jsonb(body),)).fetchone()
    assert answer is not None
    return answer[0]


def test_the_real_function_answers_the_sinks_requests_as_the_stand_in_does(
    stand_in: StandIn, sink: RestSink, db: Database
) -> None:
    stand_in.function.unknown_users = {str(NOBODY)}
    bens, kept, removed = row(BEN), measured(revision=5), row()
    sink.write([bens, kept, removed], atomic=False, deadline=soon(), rate=RATE)
    batch = [
        row(),
        row(NOBODY),
        row(ANA, id=bens.id),
        measured(revision=6),
        measured(revision=4),
        row(id=removed.id, deleted=True),
        measured(day="2024-11-05", deleted=True),
        row(BEN, id=bens.id),
    ]
    # Chunks of 3, the events of one id together: [0, 1], [2, 7], [3, 4, 5], [6].
    sink.write(batch, atomic=False, deadline=soon(), rate=RATE)
    sink.write(batch, atomic=True, deadline=soon())

    requests = stand_in.requests_to(INGEST_PATH)
    assert len(requests) == 1 + 4 + 1
    with db.connect() as conn:
        real = [call_as_postgrest(conn, seen.body) for seen in requests]
    assert real == [seen.answer for seen in requests]
    assert any(answer["updated"] for answer in real)
    assert any(answer["deleted"] for answer in real)
    assert any(answer["conflicts"] for answer in real)
    assert any(answer["unknown_users"] for answer in real)
