"""The direct Postgres sink against the real local database: what lands, what is counted, and
how it behaves when the database is locked, killed or not there at all."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from functions.errors import StoreError, StoreUnavailable
from functions.sinks import WriteResult
from functions.sinks import postgres as postgres_sink
from functions.sinks.postgres import PostgresSink
from tests.conftest import Database
from tests.sink_rows import ANA, BEN, NOBODY, row, soon

pytestmark = pytest.mark.db


@pytest.fixture
def sink(db: Database) -> Iterator[PostgresSink]:
    sink = PostgresSink(db.url, application_name=f"sink-test-{uuid.uuid4().hex[:8]}")
    try:
        yield sink
    finally:
        sink.close()


def stored(db: Database, ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[Any, ...]]:
    with db.connect() as conn:
        found = conn.execute(
            'select id, user_id, "timestamp", event_type, value, is_deleted'
            " from public.engagement_events where id = any(%s)",
            (ids,),
        ).fetchall()
    return {found_row[0]: tuple(found_row[1:]) for found_row in found}


def test_rows_land_with_their_exact_values(db: Database, sink: PostgresSink) -> None:
    first = row(value={"steps": 8421, "source": "garmin", "nested": {"ok": True}})
    second = row(BEN, event_type="goal_complete", value={})

    result = sink.write([first, second], atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0, unknown_users=())
    rows = stored(db, [first.id, second.id])
    assert rows[first.id] == (
        ANA,
        datetime(2024, 11, 3, 6, 30, 15, 123456, tzinfo=UTC),
        "app_open",
        {"steps": 8421, "source": "garmin", "nested": {"ok": True}},
        False,
    )
    assert rows[second.id] == (BEN, first.timestamp, "goal_complete", {}, False)


def test_the_same_batch_twice_is_stored_once(db: Database, sink: PostgresSink) -> None:
    batch = [row(), row(BEN), row()]

    first = sink.write(batch, atomic=False, deadline=soon())
    second = sink.write(batch, atomic=True, deadline=soon())

    assert (first.inserted, first.duplicates) == (3, 0)
    assert (second.inserted, second.duplicates) == (0, 3)
    assert len(stored(db, [r.id for r in batch])) == 3


def test_an_id_repeated_within_a_batch_counts_as_a_duplicate(
    db: Database, sink: PostgresSink
) -> None:
    once = row()
    again = row(id=once.id, value={"source": "phone"})

    result = sink.write([once, row(), again], atomic=False, deadline=soon())

    assert (result.inserted, result.duplicates) == (2, 1)
    assert stored(db, [once.id])[once.id][3] == {"source": "watch"}


def test_unknown_user_in_partial_mode_is_reported_and_the_rest_written(
    db: Database, sink: PostgresSink
) -> None:
    batch = [row(), row(NOBODY), row(BEN), row(NOBODY)]

    result = sink.write(batch, atomic=False, deadline=soon())

    assert result == WriteResult(inserted=2, duplicates=0, unknown_users=(1, 3))
    assert set(stored(db, [r.id for r in batch])) == {batch[0].id, batch[2].id}


def test_unknown_user_in_atomic_mode_writes_nothing(db: Database, sink: PostgresSink) -> None:
    batch = [row(), row(BEN), row(NOBODY)]

    result = sink.write(batch, atomic=True, deadline=soon())

    assert result == WriteResult(inserted=0, duplicates=0, unknown_users=(2,))
    assert stored(db, [r.id for r in batch]) == {}


def test_a_check_violation_is_a_refusal_without_the_row_in_it(
    db: Database, sink: PostgresSink
) -> None:
    bad = row(event_type="Secret-Diagnosis", value={"condition": "very private"})

    with pytest.raises(StoreError) as caught:
        sink.write([row(), bad], atomic=False, deadline=soon())

    assert not isinstance(caught.value, StoreUnavailable)
    assert caught.value.code == "23514"
    assert caught.value.details is None
    assert "Secret-Diagnosis" not in str(caught.value)
    assert "very private" not in str(caught.value)
    assert stored(db, [bad.id]) == {}


@pytest.mark.parametrize(
    ("statement_ms", "lock_ms", "code"),
    [(300, 5_000, "57014"), (5_000, 300, "55P03")],
    ids=["statement_timeout", "lock_timeout"],
)
def test_a_locked_table_times_out_as_unavailable_and_writes_nothing(
    db: Database, statement_ms: int, lock_ms: int, code: str
) -> None:
    sink = PostgresSink(db.url, statement_timeout_ms=statement_ms, lock_timeout_ms=lock_ms)
    batch = [row(), row(BEN)]
    with db.connect(autocommit=False) as holder:
        holder.execute("lock table public.engagement_events in access exclusive mode")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            sink.write(batch, atomic=False, deadline=soon())
        elapsed = time.monotonic() - started
        holder.rollback()
    sink.close()

    assert caught.value.code == code
    assert caught.value.stored == 0
    assert elapsed < 3
    assert stored(db, [r.id for r in batch]) == {}


def test_a_write_and_its_timeouts_end_together(db: Database) -> None:
    """The timeouts are the write's own: its connection goes back to the pool idle, with the
    settings any other transaction on it gets, after a write and after a refused one."""
    sink = PostgresSink(db.url, statement_timeout_ms=1234, lock_timeout_ms=567)
    server_settings = "select current_setting('statement_timeout'), current_setting('lock_timeout')"
    with psycopg.connect(db.url) as fresh:
        expected = fresh.execute(server_settings).fetchone()
    assert expected != ("1234ms", "567ms")

    def connection_after_write() -> tuple[Any, Any]:
        assert sink.pool is not None
        with sink.pool.connection() as conn:
            return conn.info.transaction_status, conn.execute(server_settings).fetchone()

    sink.write([row()], atomic=False, deadline=soon())
    assert connection_after_write() == (psycopg.pq.TransactionStatus.IDLE, expected)

    with pytest.raises(StoreError):
        sink.write([row(), row(event_type="Not-A-Type")], atomic=False, deadline=soon())
    assert connection_after_write() == (psycopg.pq.TransactionStatus.IDLE, expected)
    sink.close()


def test_the_deadline_caps_the_statement_timeout(db: Database, sink: PostgresSink) -> None:
    with db.connect(autocommit=False) as holder:
        holder.execute("lock table public.engagement_events in access exclusive mode")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            sink.write([row()], atomic=False, deadline=soon(0.8))
        elapsed = time.monotonic() - started
        holder.rollback()

    assert elapsed < 0.8


def test_a_killed_connection_is_replaced_by_itself(db: Database, sink: PostgresSink) -> None:
    sink.write([row()], atomic=False, deadline=soon())
    with db.connect() as admin:
        killed = admin.execute(
            "select count(pg_terminate_backend(pid)) from pg_stat_activity"
            " where application_name = %s",
            (sink.application_name,),
        ).fetchone()
    assert killed == (1,)

    batch = [row(), row(BEN)]
    result = sink.write(batch, atomic=False, deadline=soon())

    assert result.inserted == 2
    assert len(stored(db, [r.id for r in batch])) == 2


def test_a_connection_killed_mid_write_is_retried_on_a_fresh_one(
    db: Database, sink: PostgresSink
) -> None:
    sink.write([row()], atomic=False, deadline=soon())
    batch = [row(), row(BEN)]
    # Hold the table so that the sink's insert is in flight when its backend is terminated.
    with db.connect(autocommit=False) as holder, db.connect() as admin:
        holder.execute("lock table public.engagement_events in access exclusive mode")
        results: list[WriteResult] = []
        writer = threading.Thread(
            target=lambda: results.append(sink.write(batch, atomic=False, deadline=soon()))
        )
        writer.start()
        for _ in range(100):
            waiting = admin.execute(
                "select pid from pg_stat_activity where application_name = %s"
                " and wait_event_type = 'Lock'",
                (sink.application_name,),
            ).fetchall()
            if waiting:
                break
            time.sleep(0.02)
        assert waiting, "the sink's insert never waited on the lock"
        admin.execute("select pg_terminate_backend(%s)", (waiting[0][0],))
        holder.rollback()
        writer.join(timeout=10)

    assert results == [WriteResult(inserted=2, duplicates=0, unknown_users=())]
    assert len(stored(db, [r.id for r in batch])) == 2


def test_connections_are_reused_across_writes(db: Database, sink: PostgresSink) -> None:
    for _ in range(3):
        sink.write([row()], atomic=False, deadline=soon())

    with db.connect() as admin:
        sessions = admin.execute(
            "select count(*) from pg_stat_activity where application_name = %s",
            (sink.application_name,),
        ).fetchone()
    assert sessions == (1,)


def test_no_prepared_statements_are_left_on_the_server(db: Database, sink: PostgresSink) -> None:
    # psycopg prepares a query after its fifth execution unless prepare_threshold is None;
    # a prepared statement breaks under Supavisor's transaction mode.
    for _ in range(8):
        sink.write([row()], atomic=False, deadline=soon())

    assert sink.pool is not None
    with sink.pool.connection() as conn:
        assert conn.prepare_threshold is None
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)


def test_a_wrong_database_url_is_unavailable_quickly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    sink = PostgresSink(f"postgresql://postgres@127.0.0.1:{closed_port}/postgres")

    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as caught:
        sink.write([row()], atomic=False, deadline=soon())
    sink.close()

    assert time.monotonic() - started < 2
    assert caught.value.stored == 0
    assert "postgres@" not in str(caught.value)


def test_no_time_left_means_unavailable_and_nothing_written(
    db: Database, sink: PostgresSink
) -> None:
    batch = [row()]
    with pytest.raises(StoreUnavailable):
        sink.write(batch, atomic=False, deadline=time.monotonic() - 0.01)

    assert stored(db, [batch[0].id]) == {}


def test_future_rows_beyond_the_skew_are_refused(db: Database, sink: PostgresSink) -> None:
    late = row(timestamp=datetime.now(UTC) + timedelta(hours=1))

    with pytest.raises(StoreError) as caught:
        sink.write([late], atomic=False, deadline=soon())

    assert caught.value.code == "23514"
    assert stored(db, [late.id]) == {}


@pytest.mark.parametrize("path", ["json", "staged"])
def test_small_and_bulk_batches_are_decided_alike(
    db: Database, sink: PostgresSink, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The JSON document (small batches) and the COPYd table (batches of STAGED_FROM events
    or more) feed the same decision: the same batch gets the same answer and the same rows."""
    monkeypatch.setattr(postgres_sink, "STAGED_FROM", 1 if path == "staged" else 10**9)
    bens = row(BEN)
    stored_before = row(revision=1)
    sink.write([bens, stored_before], atomic=False, deadline=soon())
    measurement = '["' + str(ANA) + '","steps_import",{"source":"garmin"}]'
    batch = [
        row(),  # new
        row(NOBODY),  # unknown user
        row(ANA, id=bens.id),  # another user's id
        row(id=stored_before.id, revision=2, value={"steps": 2}),  # a newer revision
        row(id=None, identity=measurement, revision=5, value={"steps": 5}),
        row(id=None, identity=measurement, revision=7, value={"steps": 7}),  # wins
        row(id=None, identity=measurement, revision=6, value={"steps": 6}),
        row(id=uuid.uuid4(), deleted=True),  # a deletion before the row exists
        row(id=bens.id, user_id=BEN),  # BEN's own id again: a duplicate
    ]

    result = sink.write(batch, atomic=False, deadline=soon())

    assert result == WriteResult(
        inserted=2, duplicates=3, updated=1, deleted=1, unknown_users=(1,), conflicts=(2,)
    )
    with db.connect() as conn:
        values = conn.execute(
            "select value, revision from engagement_events where id = any(%s) order by revision",
            ([stored_before.id],),
        ).fetchall()
        steps = conn.execute(
            "select value ->> 'steps', revision from engagement_events"
            " where id = private.engagement_event_id(%s)",
            (measurement,),
        ).fetchall()
    assert values == [({"steps": 2}, 2)]
    assert steps == [("7", 7)]
