"""The REST sink against a local stand-in for PostgREST: the exact requests supabase-py sends,
chunking, counting, which answers are retried and which are final, and the time budget.

The stand-in answers with PostgREST's documented shapes (rows, or ``{"code", "message",
"details", "hint"}``); it is not a reimplementation. The function the sink calls for unknown
users is tested against the real local database at the end.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from functions.errors import StoreError, StoreUnavailable
from functions.sinks import FailureRecord, WriteResult
from functions.sinks.rest import RestSink
from tests import json_http, sink_rows
from tests.conftest import Database
from tests.sink_rows import ANA, BEN, NOBODY, Row, soon

KEY = "service-role-key-for-tests"
TABLE_PATH = "/rest/v1/engagement_events"
RPC_PATH = "/rest/v1/rpc/engagement_unknown_user_ids"


def row(user: uuid.UUID = ANA, **changes: Any) -> Row:
    """A steps_import row unless told otherwise."""
    return sink_rows.row(
        user, **{"event_type": "steps_import", "value": {"steps": 8421}, **changes}
    )


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class StandIn:
    """Records every request; answers table writes as PostgREST with ignore-duplicates does
    (only the rows actually inserted come back) unless a scripted reply is queued."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.stored: set[str] = set()
        self.unknown: set[str] = set()
        self.wrapped_rpc_answer = False
        self.rpc_reply: Reply | None = None  # answers the rpc instead of the stand-in's logic
        self.other_rpc: dict[str, Reply] = {}  # answers of the other functions, by name
        self.writes: list[Reply | None] = []  # the n-th table write gets writes[n] if given
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def requests_to(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    def answer(self, seen: Seen) -> Reply:
        with self._lock:
            self.seen.append(seen)
            name = seen.path.removeprefix("/rest/v1/rpc/")
            if name in self.other_rpc:
                return self.other_rpc[name]
            if seen.path == RPC_PATH and self.rpc_reply is not None:
                return self.rpc_reply
            if seen.path == RPC_PATH:
                unknown = sorted(set(seen.body["ids"]) & self.unknown)
                if self.wrapped_rpc_answer:
                    return Reply(200, [{"engagement_unknown_user_ids": u} for u in unknown])
                return Reply(200, unknown)
            index = len(self.requests_to(TABLE_PATH)) - 1
            scripted = self.writes[index] if index < len(self.writes) else None
            if scripted is not None:
                return scripted
            inserted = []
            for sent in seen.body:
                if sent["id"] not in self.stored:
                    self.stored.add(sent["id"])
                    inserted.append({"id": sent["id"]})
            return Reply(201, inserted)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                seen = Seen(
                    "POST",
                    parts.path,
                    parse_qs(parts.query),
                    {k.lower(): v for k, v in self.headers.items()},
                    json_http.read_body(self),
                )
                reply = stand_in.answer(seen)
                time.sleep(reply.delay)
                with contextlib.suppress(OSError):  # the client gave up (its deadline)
                    json_http.answer(
                        self, reply.status, json.dumps(reply.body).encode(), reply.headers
                    )

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
    sink = RestSink(stand_in.url, KEY, backoff_base_s=0.01, backoff_cap_s=0.05)
    try:
        yield sink
    finally:
        sink.close()


def postgrest_error(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "hint": None}


def test_the_write_is_the_request_supabase_py_sends(stand_in: StandIn, sink: RestSink) -> None:
    event = row(value={"steps": 8421, "source": "garmin"})

    result = sink.write([event, row(BEN)], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0, unknown_users=())
    (rpc,) = stand_in.requests_to(RPC_PATH)
    assert sorted(rpc.body["ids"]) == [str(ANA), str(BEN)]
    (write,) = stand_in.requests_to(TABLE_PATH)
    assert write.headers["apikey"] == KEY
    assert write.headers["authorization"] == f"Bearer {KEY}"
    prefer = set(write.headers["prefer"].split(","))
    assert {"resolution=ignore-duplicates", "return=representation"} <= prefer
    assert write.query["on_conflict"] == ["id"]
    assert write.query["select"] == ["id"]
    columns = write.query["columns"][0].replace('"', "").split(",")
    assert sorted(columns) == ["event_type", "id", "timestamp", "user_id", "value"]
    assert write.body[0] == {
        "id": str(event.id),
        "user_id": str(ANA),
        "timestamp": "2024-11-03T06:30:15.123456Z",
        "event_type": "steps_import",
        "value": {"steps": 8421, "source": "garmin"},
    }


def test_counts_come_from_the_rows_postgrest_returns(stand_in: StandIn, sink: RestSink) -> None:
    batch = [row() for _ in range(5)]
    stand_in.stored.update(str(r.id) for r in batch[:2])

    result = sink.write(batch, atomic=False, deadline=soon())

    assert (result.inserted, result.duplicates) == (3, 2)


def test_a_repeated_batch_is_all_duplicates(stand_in: StandIn, sink: RestSink) -> None:
    batch = [row(), row(BEN)]
    sink.write(batch, atomic=False, deadline=soon())

    again = sink.write(batch, atomic=False, deadline=soon())

    assert (again.inserted, again.duplicates) == (0, 2)


def test_partial_writes_go_in_chunks(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY, chunk_size=500)
    batch = [row() for _ in range(1201)]

    result = sink.write(batch, atomic=False, deadline=soon())
    sink.close()

    writes = stand_in.requests_to(TABLE_PATH)
    assert [len(w.body) for w in writes] == [500, 500, 201]
    assert {r["id"] for w in writes for r in w.body} == {str(r.id) for r in batch}
    assert result.inserted == 1201


def test_an_atomic_write_is_one_request(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY, chunk_size=500)

    result = sink.write([row() for _ in range(1201)], atomic=True, deadline=soon())
    sink.close()

    assert [len(w.body) for w in stand_in.requests_to(TABLE_PATH)] == [1201]
    assert result.inserted == 1201


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (409, postgrest_error("23505", "duplicate key value violates unique constraint")),
        (
            400,
            postgrest_error(
                "23514",
                'new row for relation "engagement_events" violates check constraint',
                "Failing row contains (secret diagnosis).",
            ),
        ),
        (401, postgrest_error("PGRST301", "JWSError JWSInvalidSignature")),
        (401, postgrest_error("PGRST303", "JWT expired")),
        (403, postgrest_error("42501", "permission denied for table engagement_events")),
    ],
    ids=["409", "400-23514", "401-PGRST301", "401-PGRST303", "403-42501"],
)
def test_refusals_are_final_and_keep_postgrest_code(
    stand_in: StandIn, sink: RestSink, status: int, error: dict[str, Any]
) -> None:
    stand_in.writes = [Reply(status, error)]

    with pytest.raises(StoreError) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert not isinstance(caught.value, StoreUnavailable)
    assert caught.value.code == error["code"]
    assert len(stand_in.requests_to(TABLE_PATH)) == 1
    assert "secret diagnosis" not in f"{caught.value} {caught.value.details}"
    assert KEY not in str(caught.value)
    if error["code"].startswith("23"):
        assert caught.value.details is None


@pytest.mark.parametrize(
    "failure",
    [
        Reply(500, postgrest_error("XX000", "internal error")),
        Reply(503, postgrest_error("PGRST001", "Database client error"), {"Retry-After": "0"}),
        Reply(504, postgrest_error("PGRST003", "Timed out acquiring connection")),
        Reply(502, "<html>Bad Gateway</html>"),
        Reply(408, None),
    ],
    ids=["500", "503-PGRST001", "504-PGRST003", "502-html", "408"],
)
def test_transient_answers_are_retried_until_success(
    stand_in: StandIn, sink: RestSink, failure: Reply
) -> None:
    stand_in.writes = [failure, failure]

    result = sink.write([row(), row(BEN)], atomic=False, deadline=soon())

    assert result.inserted == 2
    assert len(stand_in.requests_to(TABLE_PATH)) == 3


def test_retry_after_is_honoured(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.writes = [
        Reply(429, postgrest_error("429", "Too many requests"), {"Retry-After": "1"})
    ]

    started = time.monotonic()
    result = sink.write([row()], atomic=False, deadline=soon())

    assert result.inserted == 1
    assert time.monotonic() - started >= 1.0
    assert len(stand_in.requests_to(TABLE_PATH)) == 2


def test_a_retry_after_beyond_the_deadline_gives_up_at_once(
    stand_in: StandIn, sink: RestSink
) -> None:
    stand_in.writes = [Reply(503, postgrest_error("PGRST000", "down"), {"Retry-After": "30"})]

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon(5))

    assert time.monotonic() - started < 1
    assert caught.value.retry_after == 30
    assert len(stand_in.requests_to(TABLE_PATH)) == 1


def test_retries_stop_after_max_attempts(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.writes = [Reply(503, postgrest_error("PGRST001", "down"))] * 10

    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert caught.value.code == "PGRST001"
    assert caught.value.stored == 0
    assert len(stand_in.requests_to(TABLE_PATH)) == 4


def test_a_failing_second_chunk_reports_what_is_already_stored(stand_in: StandIn) -> None:
    sink = RestSink(stand_in.url, KEY, chunk_size=500, max_attempts=3, backoff_base_s=0.01)
    stand_in.writes = [None] + [Reply(503, postgrest_error("PGRST001", "down"))] * 3

    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row() for _ in range(1201)], atomic=False, deadline=soon())
    sink.close()

    assert caught.value.stored == 500
    assert [len(w.body) for w in stand_in.requests_to(TABLE_PATH)] == [500, 500, 500, 500]
    assert len(stand_in.stored) == 500


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
    stand_in.writes = [Reply(201, [], delay=3.0)] * 4

    deadline = soon(1.0)
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=deadline)

    assert time.monotonic() < deadline
    assert caught.value.stored == 0


@pytest.mark.parametrize("wrapped", [False, True], ids=["values", "objects"])
def test_unknown_users_in_partial_mode_are_reported_and_not_sent(
    stand_in: StandIn, sink: RestSink, wrapped: bool
) -> None:
    stand_in.unknown = {str(NOBODY)}
    stand_in.wrapped_rpc_answer = wrapped
    batch = [row(), row(NOBODY), row(BEN), row(NOBODY)]

    result = sink.write(batch, atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0, unknown_users=(1, 3))
    (write,) = stand_in.requests_to(TABLE_PATH)
    assert [r["id"] for r in write.body] == [str(batch[0].id), str(batch[2].id)]


def test_unknown_users_in_atomic_mode_write_nothing(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.unknown = {str(NOBODY)}

    result = sink.write([row(), row(NOBODY)], atomic=True, deadline=soon())

    assert result == WriteResult(inserted=0, duplicates=0, unknown_users=(1,))
    assert stand_in.requests_to(TABLE_PATH) == []


def test_a_missing_unknown_users_function_is_a_refusal(stand_in: StandIn, sink: RestSink) -> None:
    stand_in.rpc_reply = Reply(
        404,
        postgrest_error(
            "PGRST202", "Could not find the function public.engagement_unknown_user_ids"
        ),
    )

    with pytest.raises(StoreError) as caught:
        sink.write([row()], atomic=False, deadline=soon())

    assert caught.value.code == "PGRST202"
    assert not isinstance(caught.value, StoreUnavailable)
    assert len(stand_in.requests_to(RPC_PATH)) == 1
    assert stand_in.requests_to(TABLE_PATH) == []


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


# -- the function behind the rpc, on the real local database ---------------------------------


@pytest.mark.db
def test_unknown_user_function_names_only_missing_users(db: Database) -> None:
    with db.connect(autocommit=False) as conn:
        conn.execute("set local role service_role")
        found = conn.execute(
            "select * from public.engagement_unknown_user_ids(%s)", ([ANA, NOBODY, BEN, NOBODY],)
        ).fetchall()

    assert found == [(NOBODY,)]


@pytest.mark.db
@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_unknown_user_function_is_closed_to_api_users(db: Database, role: str) -> None:
    with db.connect(autocommit=False) as conn:
        conn.execute(f"set local role {role}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from public.engagement_unknown_user_ids(%s)", ([ANA],))
