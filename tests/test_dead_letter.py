"""Rejected events are kept, not dropped: the dead-letter store, who may read it, and replay."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from functions import replay
from localdb.api_roles import request_as
from localdb.cluster import ROOT
from tests.conftest import ANA, BEN, ClientFactory, Database, add_user, auth, event, json_body

NEWCOMER = "c3c3c3c3-0000-4000-8000-0000000000aa"


def failures(db: Database) -> list[dict[str, Any]]:
    with db.connect() as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cursor:
        return cursor.execute(
            "select * from private.engagement_event_failures order by event_index, id"
        ).fetchall()


def count_events(db: Database, where: str = "true", params: tuple[Any, ...] = ()) -> int:
    with db.connect() as conn:
        row = conn.execute(
            f"select count(*) from public.engagement_events where {where}",
            params,
        ).fetchone()
    return int(row[0]) if row else -1


def test_each_rejected_event_is_stored_with_its_errors_request_and_caller(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    bad_zone = event(timestamp="2025-06-01T07:30:00", timezone="Mars/Olympus_Mons")
    unknown_user = event(user_id=NEWCOMER, timestamp="2025-06-02T07:30:00")
    response = client.post(
        "/", json=[event(), bad_zone, "not an event", unknown_user], headers=auth()
    )
    assert response.status_code == 200, response.json
    body = json_body(response)
    assert body["inserted"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2, 3]

    kept = failures(db)
    assert [f["event_index"] for f in kept] == [1, 2, 3]
    assert {f["request_id"] for f in kept} == {body["request_id"]}
    assert {f["credential_type"] for f in kept} == {"legacy_jwt"}
    assert json.loads(kept[0]["event"]) == bad_zone
    assert kept[0]["errors"] == body["rejected"][0]["errors"]
    assert kept[0]["user_id"] == uuid.UUID(ANA)
    assert json.loads(kept[1]["event"]) == "not an event"
    assert kept[1]["user_id"] is None
    assert kept[2]["errors"] == [
        {"path": "/user_id", "message": "user_id is not a user of this project"}
    ]
    assert all(f["replayed_at"] is None and f["attempts"] == 1 for f in kept)


def test_a_retried_batch_counts_attempts_instead_of_storing_failures_twice(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    batch = [event(), event(event_type="Bad-Type")]
    client.post("/", json=batch, headers=auth())
    client.post("/", json=batch, headers=auth())
    kept = failures(db)
    assert len(kept) == 1
    assert kept[0]["attempts"] == 2
    assert kept[0]["last_failed_at"] >= kept[0]["first_failed_at"]


def test_atomic_batch_with_a_bad_event_stores_only_the_failure(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    before = count_events(db)
    response = client.post(
        "/",
        json={"mode": "atomic", "events": [event(), event(timestamp="yesterday")]},
        headers=auth(),
    )
    assert response.status_code == 422
    assert count_events(db) == before
    assert [f["event_index"] for f in failures(db)] == [1]


def test_events_postgres_cannot_hold_as_jsonb_are_kept_too(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    hostile = event(value={"platform": "ios\u0000", "\ud800key": "x"})
    body = json.dumps([hostile], ensure_ascii=True)
    response = client.post("/", data=body, content_type="application/json", headers=auth())
    assert response.status_code == 422, response.json
    kept = failures(db)
    assert len(kept) == 1
    assert json.loads(kept[0]["event"]) == hostile


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_read_write_or_replay_failures(db: Database, role: str) -> None:
    with db.connect("authenticator", autocommit=False) as conn:
        for statement in (
            "select count(*) from private.engagement_event_failures",
            "select public.record_engagement_failures('[]'::jsonb)",
            "delete from private.engagement_event_failures",
        ):
            user = ANA if role == "authenticated" else None
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege),
                request_as(conn, role, user) as c,
            ):
                c.execute(statement)


def test_service_role_reads_failures(db: Database, make_client: ClientFactory) -> None:
    make_client("batch_import").post("/", json=[event(event_type="")], headers=auth())
    with (
        db.connect("authenticator", autocommit=False) as conn,
        request_as(conn, "service_role") as c,
    ):
        row = c.execute("select count(*) from private.engagement_event_failures").fetchone()
    assert row == (1,)


def test_replay_imports_what_passes_now_once_and_marks_it(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import")
    newcomer_events = [
        event(user_id=NEWCOMER, timestamp="2025-07-01T08:00:00"),
        event(user_id=NEWCOMER, timestamp=None, timezone=None, event_id=str(uuid.uuid4())),
    ]
    still_bad = event(timezone="Nowhere/Special")
    response = client.post("/", json=[*newcomer_events, still_bad], headers=auth())
    assert response.status_code == 422
    assert len(failures(db)) == 3

    nothing_yet = replay.replay(db.url)
    assert (nothing_yet.imported, nothing_yet.still_failing) == (0, 3)
    assert nothing_yet.unknown_users == 2

    add_user(db, NEWCOMER)
    dry = replay.replay(db.url, dry_run=True)
    assert (dry.imported, dry.still_failing) == (2, 1)
    assert count_events(db, "user_id = %s", (NEWCOMER,)) == 0

    first = replay.replay(db.url)
    assert (first.imported, first.already_stored, first.still_failing) == (2, 0, 1)
    assert count_events(db, "user_id = %s", (NEWCOMER,)) == 2
    kept = failures(db)
    replayed = [f for f in kept if f["replayed_at"] is not None]
    assert len(replayed) == 2
    assert {f["replay_request_id"] for f in replayed} == {first.replay_id}

    second = replay.replay(db.url)
    assert (second.examined, second.imported) == (1, 0)
    assert count_events(db, "user_id = %s", (NEWCOMER,)) == 2

    # The same events sent again by the caller are duplicates, not new rows.
    again = client.post("/", json=newcomer_events, headers=auth())
    assert (json_body(again)["inserted"], json_body(again)["duplicates"]) == (0, 2)


def test_replay_refuses_an_event_too_large_for_batch_import(
    db: Database, make_client: ClientFactory
) -> None:
    """An event over MAX_EVENT_BYTES, rejected for its size alone, stays a failure on replay:
    replay takes batch_import's validation step with the same limit."""
    client = make_client("batch_import", MAX_EVENT_BYTES="1024")
    large = event(event_type="custom_x", timestamp="2025-06-01T07:30:00Z", timezone=None)
    large["value"] = {"note": "x" * 2_000}
    response = client.post("/", json=[large], headers=auth())
    assert response.status_code == 422
    assert json_body(response)["rejected"][0]["errors"][0]["path"] == ""

    again = replay.replay(db.url)
    assert (again.imported, again.still_failing) == (0, 1)
    assert count_events(db, "event_type = 'custom_x'") == 0
    assert "1024 bytes" in failures(db)[0]["errors"][0]["message"]


def test_replay_applies_the_configured_future_skew(
    db: Database, make_client: ClientFactory
) -> None:
    """With FUTURE_SKEW_SECONDS=60, an event three minutes ahead is refused by batch_import and
    by replay alike (the default of five minutes would let replay import it)."""
    client = make_client("batch_import", FUTURE_SKEW_SECONDS="60")
    ahead = datetime.now(UTC) + timedelta(minutes=3)
    early = event(timestamp=ahead.strftime("%Y-%m-%dT%H:%M:%SZ"), timezone=None)
    response = client.post("/", json=[early], headers=auth())
    assert response.status_code == 422
    assert json_body(response)["rejected"][0]["errors"][0]["path"] == "/timestamp"

    again = replay.replay(db.url)
    assert (again.imported, again.still_failing) == (0, 1)
    assert count_events(db, '"timestamp" > now()') == 0


def test_replay_reads_stored_events_as_batch_import_reads_bodies(db: Database) -> None:
    """A stored event text that batch_import would refuse as a body (here a repeated key,
    which json.loads would quietly resolve to its last value) stays a failure."""
    text = (
        f'{{"user_id": "{ANA}", "user_id": "{BEN}", "event_type": "app_open",'
        ' "timestamp": "2025-06-01T07:30:00Z", "value": {"platform": "ios"}}'
    )
    with db.connect() as conn:
        conn.execute(
            "insert into private.engagement_event_failures (fingerprint, request_id,"
            " credential_type, event_index, event, errors)"
            " values ('repeated-key', 'r', 'legacy_jwt', 0, %s, '[]')",
            (text,),
        )
    again = replay.replay(db.url)
    assert (again.imported, again.still_failing) == (0, 1)
    assert "repeats a key" in failures(db)[0]["errors"][0]["message"]


def test_replay_command_reports_and_needs_a_database(db: Database) -> None:
    command = [sys.executable, "-m", "functions.replay"]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    missing = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert missing.returncode == 2
    assert "DATABASE_URL" in missing.stderr

    done = subprocess.run(
        [*command, "--database-url", db.url],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "0 pending failures examined, 0 imported" in done.stdout


def test_a_dead_letter_store_that_fails_is_reported_with_what_was_stored(
    db: Database, make_client: ClientFactory
) -> None:
    with db.connect() as conn:
        conn.execute("drop function public.record_engagement_failures(jsonb)")
    client = make_client("batch_import")
    response = client.post(
        "/", json=[event(timestamp="2025-09-01T08:00:00"), event(event_type="X")], headers=auth()
    )
    # The valid event is committed; the caller learns it, and that the batch is not complete.
    assert response.status_code == 502
    body = json_body(response)
    assert body["error"] == "store_error"
    assert body["store_code"] == "42883"
    assert body["stored"] == 1
    assert count_events(db, "\"timestamp\" = '2025-09-01T12:00:00Z'") == 1
