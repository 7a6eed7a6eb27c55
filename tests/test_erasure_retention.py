"""GDPR erasure of one user, the deletion stamp of soft deletes, and the retention purge."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from localdb.api_roles import request_as
from tests.conftest import ANA, BEN, ClientFactory, Database, auth, event


def scalar(db: Database, query: str, params: tuple[Any, ...] = ()) -> Any:
    with db.connect() as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def events_of(db: Database, user: str) -> int:
    return int(
        scalar(db, "select count(*) from public.engagement_events where user_id = %s", (user,))
    )


def failures_naming(db: Database, user: str) -> int:
    return int(
        scalar(
            db,
            "select count(*) from private.engagement_event_failures"
            " where user_id = %s or strpos(lower(event), %s) > 0",
            (user, user),
        )
    )


def dead_letter_for(make_client: ClientFactory, user: str) -> None:
    """Two rejected events of `user`: one with its id as user_id, one naming it elsewhere."""
    response = make_client("batch_import").post(
        "/",
        json=[
            event(user_id=user, timezone="Atlantis/Capital"),
            event(user_id="not-a-uuid", value={"note": user.upper()}),
        ],
        headers=auth(),
    )
    assert response.status_code == 422


def test_erasure_removes_the_users_events_and_failures_and_reports_them(
    db: Database, make_client: ClientFactory
) -> None:
    dead_letter_for(make_client, ANA)
    dead_letter_for(make_client, BEN)
    ana_events, ben_events = events_of(db, ANA), events_of(db, BEN)
    assert ana_events > 0
    assert failures_naming(db, ANA) == 2

    with (
        db.connect("authenticator", autocommit=False) as conn,
        request_as(conn, "service_role") as c,
    ):
        row = c.execute("select public.erase_engagement_user(%s)", (ANA,)).fetchone()
    assert row is not None
    report = row[0]
    assert report["user_id"] == ANA
    assert (report["events"], report["failures"]) == (ana_events, 2)
    assert "erased_at" in report
    assert events_of(db, ANA) == 0
    assert failures_naming(db, ANA) == 0
    # Nobody else's data went with it.
    assert events_of(db, BEN) == ben_events
    assert failures_naming(db, BEN) == 2


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_only_service_role_may_erase(db: Database, role: str) -> None:
    before = events_of(db, BEN)
    with (
        db.connect("authenticator", autocommit=False) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
        request_as(conn, role, BEN if role == "authenticated" else None) as c,
    ):
        c.execute("select public.erase_engagement_user(%s)", (BEN,))
    assert events_of(db, BEN) == before


def test_deleting_the_auth_user_erases_events_and_failures(
    db: Database, make_client: ClientFactory
) -> None:
    dead_letter_for(make_client, ANA)
    ben_events = events_of(db, BEN)
    # Supabase Auth deletes users as supabase_auth_admin, which has no rights on `private`.
    with db.connect("supabase_auth_admin") as conn:
        deleted = conn.execute("delete from auth.users where id = %s", (ANA,)).rowcount
    assert deleted == 1
    assert events_of(db, ANA) == 0
    assert failures_naming(db, ANA) == 0
    assert events_of(db, BEN) == ben_events


def live_event_of(db: Database, user: str) -> str:
    return str(
        scalar(
            db,
            "select id from public.engagement_events where user_id = %s and not is_deleted limit 1",
            (user,),
        )
    )


def test_soft_delete_is_stamped_by_the_database_and_cannot_be_backdated(db: Database) -> None:
    target = live_event_of(db, ANA)
    with db.connect("authenticator", autocommit=False) as conn:
        with request_as(conn, "authenticated", ANA) as c:
            c.execute(
                "update public.engagement_events set is_deleted = true where id = %s", (target,)
            )
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            request_as(conn, "authenticated", ANA) as c,
        ):
            c.execute(
                "update public.engagement_events set deleted_at = now() - interval '1 year'"
                " where id = %s",
                (target,),
            )
    stamped = scalar(
        db,
        "select now() - deleted_at < interval '1 minute' from public.engagement_events"
        " where id = %s",
        (target,),
    )
    assert stamped is True

    # service_role restoring the event clears the stamp; the check keeps the two in step.
    with (
        db.connect("authenticator", autocommit=False) as conn,
        request_as(conn, "service_role") as c,
    ):
        c.execute("update public.engagement_events set is_deleted = false where id = %s", (target,))
    assert (
        scalar(db, "select deleted_at from public.engagement_events where id = %s", (target,))
        is None
    )


def test_purge_removes_what_retention_says_and_nothing_else(
    db: Database, make_client: ClientFactory
) -> None:
    old_deleted, recent_deleted = live_event_of(db, ANA), live_event_of(db, BEN)
    dead_letter_for(make_client, ANA)
    with db.connect() as conn:
        conn.execute(
            "update public.engagement_events set is_deleted = true where id = any(%s)",
            ([old_deleted, recent_deleted],),
        )
        # Backdate as the owner, past the trigger, to stand for time passing.
        conn.execute(
            "alter table public.engagement_events disable trigger engagement_events_stamp_deletion"
        )
        conn.execute(
            "update public.engagement_events set deleted_at = now() - interval '31 days' where id = %s",
            (old_deleted,),
        )
        conn.execute(
            "alter table public.engagement_events enable trigger engagement_events_stamp_deletion"
        )
        conn.execute(
            "update private.engagement_event_failures set last_failed_at = now() - interval '31 days'"
            " where user_id = %s",
            (ANA,),
        )
        conn.execute(
            'insert into public.engagement_events (user_id, "timestamp", event_type)'
            " values (%s, now() - interval '37 months', 'app_open')",
            (BEN,),
        )
        expired = conn.execute(
            "select count(*) from public.engagement_events"
            " where \"timestamp\" < now() - interval '36 months'"
        ).fetchone()
    total_before = scalar(db, "select count(*) from public.engagement_events")
    failures_before = scalar(db, "select count(*) from private.engagement_event_failures")

    with (
        db.connect("authenticator", autocommit=False) as conn,
        request_as(conn, "service_role") as c,
    ):
        row = c.execute("select private.purge_engagement_data()").fetchone()
    assert row is not None
    report = row[0]
    assert expired is not None
    assert report["soft_deleted_events"] == 1
    assert report["expired_events"] == expired[0]
    assert report["failures"] == 1
    assert scalar(db, "select count(*) from public.engagement_events") == (
        total_before - 1 - expired[0]
    )
    assert (
        scalar(db, "select count(*) from private.engagement_event_failures") == failures_before - 1
    )
    assert (
        scalar(db, "select count(*) from public.engagement_events where id = %s", (old_deleted,))
        == 0
    )
    assert (
        scalar(db, "select count(*) from public.engagement_events where id = %s", (recent_deleted,))
        == 1
    )
