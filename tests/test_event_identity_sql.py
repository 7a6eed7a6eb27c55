"""Migration 20241230 (event identity) where pgTAP cannot reach: two projects derive different
ids, the key survives the migration running again, and concurrent requests carrying versions
of the same measurement end with one row holding the highest revision."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from localdb import cluster as localcluster
from tests.conftest import Database

MIGRATION = localcluster.MIGRATIONS / "20241230000000_event_identity.sql"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
INGEST = "select public.ingest_engagement_events(%s::jsonb, %s)"


def derived_id(cluster: localcluster.Cluster, dbname: str, identity: str) -> str:
    with cluster.connect("postgres", dbname) as conn:
        row = conn.execute("select private.engagement_event_id(%s)::text", (identity,)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
def two_projects(cluster: localcluster.Cluster) -> Iterator[tuple[str, str]]:
    """Two databases built from the migrations, as two Supabase projects would be."""
    names = ("identity_project_one", "identity_project_two")
    try:
        for name in names:
            cluster.prepare_database(name, seed=None)
        yield names
    finally:
        for name in names:
            cluster.drop(name)


def test_two_projects_derive_different_ids_for_the_same_event(
    cluster: localcluster.Cluster, two_projects: tuple[str, str]
) -> None:
    identity = json.dumps([ANA, "steps_import", {"source": "garmin"}])
    one, two = (derived_id(cluster, name, identity) for name in two_projects)
    assert one != two
    for name in two_projects:
        with cluster.connect("postgres", name) as conn:
            assert conn.execute(
                "select count(*), min(octet_length(key)) from private.engagement_id_key"
            ).fetchone() == (1, 32)


def test_the_migration_run_again_keeps_the_key_and_so_the_ids(db: Database) -> None:
    before = derived_id(db.cluster, db.name, "steps|garmin|2024-12-01")
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    assert derived_id(db.cluster, db.name, "steps|garmin|2024-12-01") == before


# ------------------------------------------------------------------------------- concurrency


def event(
    index: int, user: str, *, event_id: str | None = None, revision: int | None = None
) -> dict[str, Any]:
    return {
        "index": index,
        "id": event_id,
        "identity": None if event_id else json.dumps([user, "steps_import", "garmin", "day-1"]),
        "user_id": user,
        "event_type": "steps_import",
        "timestamp": "2024-12-01T08:00:00Z",
        "value": {"steps": 1000 * (revision or 0)},
        "revision": revision,
        "deleted": False,
    }


def service_connection(db: Database) -> psycopg.Connection[Any]:
    conn = db.connect(autocommit=False)
    conn.execute("set local role service_role")
    return conn


def ingest(conn: psycopg.Connection[Any], events: list[dict[str, Any]], *, atomic: bool) -> Any:
    row = conn.execute(INGEST, (json.dumps(events), atomic)).fetchone()
    assert row is not None
    return row[0]


def wait_until_blocked(db: Database, pid: int) -> None:
    """Until the backend `pid` waits for a lock (the other request's uncommitted row)."""
    with db.connect() as watcher:
        for _ in range(600):
            row = watcher.execute(
                "select wait_event_type from pg_stat_activity where pid = %s", (pid,)
            ).fetchone()
            if row == ("Lock",):
                return
            watcher.execute("select pg_sleep(0.05)")
    pytest.fail(f"backend {pid} never waited for the first request's row")


def race(
    db: Database,
    first: list[dict[str, Any]],
    second: list[dict[str, Any]],
    *,
    atomic: bool = False,
) -> tuple[Any, Any]:
    """`first` writes and holds its transaction open; `second` starts and must wait for it;
    then `first` commits, and `second` finishes and commits."""
    one, two = service_connection(db), service_connection(db)
    try:
        first_result = ingest(one, first, atomic=atomic)
        answers: dict[str, Any] = {}

        def run_second() -> None:
            try:
                answers["result"] = ingest(two, second, atomic=atomic)
                two.commit()
            except psycopg.Error as exc:  # raised again in the test thread below
                answers["error"] = exc

        thread = threading.Thread(target=run_second)
        thread.start()
        wait_until_blocked(db, two.info.backend_pid)
        one.commit()
        thread.join(timeout=60)
        assert not thread.is_alive()
        if "error" in answers:
            raise answers["error"]
        return first_result, answers["result"]
    finally:
        one.close()
        two.close()


def stored(db: Database, user: str) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "select revision, value from public.engagement_events"
            " where id = private.engagement_event_id(%s)",
            (json.dumps([user, "steps_import", "garmin", "day-1"]),),
        ).fetchall()


def test_a_newer_revision_waiting_for_an_older_one_replaces_it(db: Database) -> None:
    first, second = race(db, [event(0, ANA, revision=1)], [event(0, ANA, revision=2)])
    assert first["inserted"] == 1
    # The second request met the first one's row only when it was written: it is counted as
    # written (not as a duplicate), and its revision is what the table holds.
    assert second["duplicates"] == 0
    assert second["inserted"] + second["updated"] == 1
    assert stored(db, ANA) == [(2, {"steps": 2000})]


def test_an_older_revision_waiting_for_a_newer_one_changes_nothing(db: Database) -> None:
    first, second = race(db, [event(0, ANA, revision=2)], [event(0, ANA, revision=1)])
    assert first["inserted"] == 1
    assert second == {
        "inserted": 0,
        "updated": 0,
        "deleted": 0,
        "duplicates": 1,
        "unknown_users": [],
        "conflicts": [],
        "retry_after": None,
    }
    assert stored(db, ANA) == [(2, {"steps": 2000})]


SQUATTED = "0e000000-0000-4000-8000-0000000000aa"


def test_an_id_another_user_stored_meanwhile_is_a_conflict(db: Database) -> None:
    _, second = race(
        db, [event(0, BEN, event_id=SQUATTED)], [event(4, ANA, event_id=SQUATTED, revision=9)]
    )
    assert second["conflicts"] == [4]
    assert second["duplicates"] == 0
    with db.connect() as conn:
        assert conn.execute(
            "select user_id::text, revision from public.engagement_events where id = %s",
            (SQUATTED,),
        ).fetchall() == [(BEN, None)]


def test_atomic_an_id_another_user_stored_meanwhile_leaves_nothing_of_the_batch(
    db: Database,
) -> None:
    _, second = race(
        db,
        [event(0, BEN, event_id=SQUATTED)],
        [event(0, ANA, revision=3), event(1, ANA, event_id=SQUATTED)],
        atomic=True,
    )
    assert second["conflicts"] == [1]
    assert second["inserted"] == 0
    assert stored(db, ANA) == []
