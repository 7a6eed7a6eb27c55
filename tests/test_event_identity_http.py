"""Event identity, revisions and deletions through batch_import's HTTP contract (direct sink,
real database): a running daily step total that the newest revision overwrites whatever the
arrival order, deletions from a health platform's changes feed, several versions in one
batch, ids of other users refused and kept, concurrent revisions, and replay on the same path.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest
from flask.testing import FlaskClient

from functions import replay
from functions.config import Settings
from localdb.api_roles import request_as
from tests import openapi_contract as contract
from tests.conftest import ClientFactory, Database, add_user, auth

PERIOD = {"period_start": "2024-12-01T00:00:00+01:00", "period_end": "2024-12-02T00:00:00+01:00"}
# Users of their own (the seed has step counts of its users), added by the client fixture.
ANA = "c3c3c3c3-0000-4000-8000-00000000000a"
BEN = "c3c3c3c3-0000-4000-8000-00000000000b"
NOBODY = "99999999-0000-4000-8000-000000000009"


def steps(
    total: int, revision: int | None = None, user: str = ANA, **fields: Any
) -> dict[str, Any]:
    """Today's running step total from Garmin, as a wearables provider posts it."""
    event: dict[str, Any] = {
        "user_id": user,
        "event_type": "steps_import",
        "timestamp": "2024-12-01T18:00:00Z",
        "value": {"steps": total, "source": "garmin", **PERIOD},
    }
    if revision is not None:
        event["revision"] = revision
    event.update(fields)
    return event


def deletion(**fields: Any) -> dict[str, Any]:
    """A deletion reported by the source, naming the measurement by its identity fields."""
    return {
        "user_id": ANA,
        "event_type": "steps_import",
        "value": {"source": "garmin", **PERIOD},
        "deleted": True,
        **fields,
    }


def post(client: FlaskClient, events: list[dict[str, Any]], **envelope: Any) -> dict[str, Any]:
    response = client.post("/", json={"events": events, **envelope}, headers=auth())
    answer = contract.from_flask(response)
    assert contract.contract_problems(answer, "/batch_import", "post") == []
    body: dict[str, Any] = response.get_json()
    body["status"] = response.status_code
    return body


def counts(body: dict[str, Any]) -> tuple[int, int, int, int]:
    return body["inserted"], body["updated"], body["deleted"], body["duplicates"]


def rows(db: Database, user: str = ANA) -> list[tuple[Any, ...]]:
    """The user's steps rows: (steps, revision, is_deleted), oldest first."""
    with db.connect() as conn:
        return conn.execute(
            "select (value ->> 'steps')::int, revision, is_deleted from engagement_events"
            " where user_id = %s and event_type = 'steps_import' order by timestamp, id",
            (user,),
        ).fetchall()


def failures(db: Database) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return conn.execute(
            "select event_index, user_id::text, errors from private.engagement_event_failures"
            " order by id"
        ).fetchall()


@pytest.fixture(autouse=True)
def users(db: Database) -> None:
    add_user(db, ANA)
    add_user(db, BEN)


@pytest.fixture
def client(make_client: ClientFactory) -> FlaskClient:
    return make_client("batch_import")


# --- a running daily total ----------------------------------------------------------------------


def test_the_newest_revision_of_a_daily_total_wins_whatever_the_arrival_order(
    client: FlaskClient, db: Database
) -> None:
    assert counts(post(client, [steps(1200, revision=1)])) == (1, 0, 0, 0)
    assert counts(post(client, [steps(9400, revision=3)])) == (0, 1, 0, 0)
    # The 2 p.m. delivery, retried late: older than what is stored, it changes nothing.
    assert counts(post(client, [steps(6100, revision=2)])) == (0, 0, 0, 1)
    assert counts(post(client, [steps(9400, revision=3)])) == (0, 0, 0, 1)

    assert rows(db) == [(9400, 3, False)]


def test_without_revision_the_first_stored_version_stands(
    client: FlaskClient, db: Database
) -> None:
    assert counts(post(client, [steps(1200)])) == (1, 0, 0, 0)
    assert counts(post(client, [steps(9400)])) == (0, 0, 0, 1)

    assert rows(db) == [(1200, None, False)]


def test_a_revision_replaces_a_row_stored_without_one(client: FlaskClient, db: Database) -> None:
    post(client, [steps(1200)])
    assert counts(post(client, [steps(9400, revision=0)])) == (0, 1, 0, 0)

    assert rows(db) == [(9400, 0, False)]


def test_the_same_period_written_with_another_offset_is_the_same_measurement(
    client: FlaskClient, db: Database
) -> None:
    post(client, [steps(1200, revision=1)])
    in_utc = steps(9400, revision=2)
    in_utc["value"] |= {
        "period_start": "2024-11-30T23:00:00Z",
        "period_end": "2024-12-01T23:00:00Z",
    }

    assert counts(post(client, [in_utc])) == (0, 1, 0, 0)
    assert rows(db) == [(9400, 2, False)]


def test_revisions_with_an_event_id_replace_the_row_with_that_id(
    client: FlaskClient, db: Database
) -> None:
    event_id = str(uuid.uuid4())
    post(client, [steps(1200, revision=10, event_id=event_id)])
    moved = steps(9400, revision=20, event_id=event_id, timestamp="2024-12-01T22:00:00Z")

    assert counts(post(client, [moved])) == (0, 1, 0, 0)
    with db.connect() as conn:
        assert conn.execute(
            "select value ->> 'steps', revision, timestamp = '2024-12-01T22:00:00Z'"
            " from engagement_events where id = %s",
            (event_id,),
        ).fetchone() == ("9400", 20, True)


def test_several_versions_in_one_batch_are_decided_once(client: FlaskClient, db: Database) -> None:
    body = post(client, [steps(6100, revision=2), steps(9400, revision=3), steps(1200, revision=1)])

    assert counts(body) == (1, 0, 0, 2)
    assert body["rejected"] == []
    assert rows(db) == [(9400, 3, False)]


# --- deletions ----------------------------------------------------------------------------------


def test_a_deletion_by_identity_fields_marks_the_row_deleted_for_good(
    client: FlaskClient, db: Database
) -> None:
    post(client, [steps(9400, revision=3)])

    assert counts(post(client, [deletion()])) == (0, 0, 1, 0)
    assert rows(db) == [(9400, 3, True)]
    with db.connect() as conn:
        deleted_at = conn.execute(
            "select deleted_at from engagement_events where user_id = %s", (ANA,)
        ).fetchone()
    assert deleted_at is not None
    assert deleted_at[0] is not None
    # Imports never undo a deletion, whatever their revision.
    assert counts(post(client, [steps(9999, revision=4)])) == (0, 0, 0, 1)
    assert counts(post(client, [deletion()])) == (0, 0, 0, 1)
    assert rows(db) == [(9400, 3, True)]


def test_a_deletion_that_arrives_first_keeps_an_older_version_out(
    client: FlaskClient, db: Database
) -> None:
    assert counts(post(client, [deletion()])) == (0, 0, 1, 0)
    assert counts(post(client, [steps(1200, revision=1)])) == (0, 0, 0, 1)

    ((_, _, is_deleted),) = rows(db)
    assert is_deleted is True


def test_a_deletion_with_an_older_revision_than_the_row_changes_nothing(
    client: FlaskClient, db: Database
) -> None:
    post(client, [steps(9400, revision=3)])

    assert counts(post(client, [deletion(revision=2)])) == (0, 0, 0, 1)
    assert counts(post(client, [deletion(revision=4)])) == (0, 0, 1, 0)
    assert rows(db) == [(9400, 4, True)]


def test_a_deletion_by_event_id_needs_no_value(client: FlaskClient, db: Database) -> None:
    event_id = str(uuid.uuid4())
    post(client, [steps(9400, event_id=event_id)])
    gone = {"user_id": ANA, "event_type": "steps_import", "event_id": event_id, "deleted": True}

    assert counts(post(client, [gone])) == (0, 0, 1, 0)
    assert rows(db) == [(9400, None, True)]


def test_a_deletion_that_names_no_event_is_rejected_with_what_it_lacks(
    client: FlaskClient, db: Database
) -> None:
    lacking = deletion(value={"source": "garmin"})

    body = post(client, [lacking])

    assert body["status"] == 422
    ((error,),) = [r["errors"] for r in body["rejected"]]
    assert error["path"] == "/value"
    assert error["message"].endswith("/value lacks period_end, period_start")
    assert rows(db) == []


# --- ids of other users --------------------------------------------------------------------------


def test_an_event_id_of_another_users_event_is_rejected_kept_and_not_a_duplicate(
    client: FlaskClient, db: Database
) -> None:
    taken = str(uuid.uuid4())
    post(client, [steps(9400, event_id=taken)])
    bens = steps(3000, user=BEN, event_id=taken)
    other = steps(500, user=BEN, event_type="steps_import", value={"steps": 500})

    body = post(client, [bens, other])

    assert body["status"] == 200
    assert counts(body) == (1, 0, 0, 0)
    (rejection,) = body["rejected"]
    assert rejection["index"] == 0
    assert rejection["event_id"] == taken
    assert rejection["errors"] == [
        {
            "path": "/event_id",
            "message": "event_id is already the id of another user's event; this event was "
            "not stored",
        }
    ]
    assert ANA not in str(body)
    assert "9400" not in str(body)
    assert rows(db, ANA) == [(9400, None, False)]
    assert [(index, user) for index, user, _ in failures(db)] == [(0, BEN)]


def test_a_derived_id_of_another_users_row_is_rejected_at_the_event_itself(
    client: FlaskClient, db: Database
) -> None:
    """A row of BEN's squats the id ANA's event derives (only service_role could place it):
    ANA's event is refused at "" and kept, BEN's row stays as it was."""
    post(client, [steps(9400)])
    with db.connect() as conn:
        conn.execute("update engagement_events set user_id = %s where user_id = %s", (BEN, ANA))

    body = post(client, [steps(9400)])

    assert body["status"] == 422
    ((error,),) = [r["errors"] for r in body["rejected"]]
    assert error["path"] == ""
    assert "already the id of another user's event" in error["message"]
    assert rows(db, BEN) == [(9400, None, False)]
    assert rows(db, ANA) == []
    assert len(failures(db)) == 1


def test_an_atomic_batch_with_another_users_id_stores_nothing(
    client: FlaskClient, db: Database
) -> None:
    taken = str(uuid.uuid4())
    post(client, [steps(9400, event_id=taken)])

    body = post(
        client, [steps(100, user=BEN), steps(3000, user=BEN, event_id=taken)], mode="atomic"
    )

    assert body["status"] == 422
    assert counts(body) == (0, 0, 0, 0)
    assert [r["index"] for r in body["rejected"]] == [1]
    assert rows(db, BEN) == []


def test_a_signed_in_user_cannot_derive_ids_nor_set_revisions(db: Database) -> None:
    with db.connect() as conn:
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            request_as(conn, "authenticated", ANA) as as_ana,
        ):
            as_ana.execute("select private.engagement_event_id('guess')")
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            request_as(conn, "authenticated", ANA) as as_ana,
        ):
            as_ana.execute(
                "insert into public.engagement_events (user_id, event_type, revision)"
                " values (%s, 'app_open', 99)",
                (ANA,),
            )
        with request_as(conn, "authenticated", ANA) as as_ana:
            as_ana.execute(
                "insert into public.engagement_events (user_id, event_type) values (%s, 'app_open')",
                (ANA,),
            )


# --- concurrency and replay ---------------------------------------------------------------------


def test_concurrent_revisions_of_one_measurement_leave_one_row_with_the_highest(
    make_client: ClientFactory, db: Database
) -> None:
    clients = [make_client("batch_import") for _ in range(6)]
    answers: list[dict[str, Any]] = []
    start = threading.Barrier(len(clients))
    lock = threading.Lock()

    def send(client: FlaskClient, revision: int) -> None:
        start.wait()
        body = post(client, [steps(1000 * revision, revision=revision)])
        with lock:
            answers.append(body)

    threads = [
        threading.Thread(target=send, args=(client, revision))
        for revision, client in enumerate(clients, start=1)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(body["status"] for body in answers) == [200] * 6
    assert sum(body["inserted"] for body in answers) == 1
    assert sum(body["inserted"] + body["updated"] + body["duplicates"] for body in answers) == 6
    assert rows(db) == [(6000, 6, False)]


def test_replay_stores_under_the_id_batch_import_derives(client: FlaskClient, db: Database) -> None:
    """An event of a user who did not exist yet is kept; once the user exists, replay stores
    it, and the same event sent again is a duplicate of the replayed row."""
    late = steps(4200, user=NOBODY)
    assert post(client, [late])["status"] == 422
    add_user(db, NOBODY)

    report = replay.replay(
        db.url, settings=Settings.from_env(needs_sink=False, needs_credentials=False)
    )

    assert (report.imported, report.still_failing) == (1, 0)
    assert counts(post(client, [late])) == (0, 0, 0, 1)
    assert rows(db, NOBODY) == [(4200, None, False)]
