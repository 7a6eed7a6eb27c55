"""Row-level security through the real Data API: every CRUD operation on engagement_events as
anon, user A, user B and service_role, with the exact answer each refused attempt gets.

The same attempts run against the local database in supabase/tests/engagement_events_rls.test.sql
(docs/rls-audit.md); here they go through the project's gateway and PostgREST, with tokens
its Auth issued, so that grants, policies and the gateway's key handling are checked together.
"""

from __future__ import annotations

from typing import Any

from tests.live.api import Caller, DataApi, event, in_list
from tests.live.checks import Checks
from tests.live.conftest import LiveUsers
from tests.live.report import LiveReport

AREA = "REST (PostgREST) on engagement_events"
REFUSED = "refused: 42501 (401 or 403)"


def seed(api: DataApi, service: Caller, rows: list[dict[str, Any]]) -> None:
    """Insert rows as service_role; the test cannot start without them."""
    answer = api.insert(service, rows)
    assert answer.status == 201, f"service_role could not seed rows: {answer.describe()}"


def stored(api: DataApi, service: Caller, *ids: str) -> dict[str, dict[str, Any]]:
    """The rows with these ids as service_role sees them (bypassing RLS)."""
    answer = api.select(service, id=in_list(list(ids)))
    assert answer.ok, f"service_role could not read back: {answer.describe()}"
    return {str(r["id"]): r for r in answer.rows}


def owned_by(api: DataApi, service: Caller, user_id: str) -> set[str]:
    answer = api.select(service, user_id=f"eq.{user_id}")
    assert answer.ok, f"service_role could not list rows: {answer.describe()}"
    return answer.ids()


def test_select_each_role_sees_only_its_own_rows(
    api: DataApi, users: LiveUsers, anon: Caller, service: Caller, report: LiveReport
) -> None:
    a, b = users.a, users.b
    rows = [event(a.id), event(a.id), event(b.id), event(b.id)]
    seed(api, service, rows)
    a_ids, b_ids = {rows[0]["id"], rows[1]["id"]}, {rows[2]["id"], rows[3]["id"]}
    checks = Checks(report, AREA)

    for user, own in ((a, a_ids), (b, b_ids)):
        seen = api.select(user.caller)
        everything_own = owned_by(api, service, user.id)
        checks.answer(
            user.caller,
            "select all events",
            seen,
            expected="exactly the user's own rows",
            ok=seen.status == 200
            and seen.ids() == everything_own
            and own <= seen.ids()
            and all(r["user_id"] == user.id for r in seen.rows),
        )
    other_row = rows[2]["id"]
    by_id = api.select(a.caller, id=f"eq.{other_row}")
    checks.answer(
        a.caller,
        "select B's event by its id",
        by_id,
        expected="no rows",
        ok=by_id.status == 200 and not by_id.rows,
    )
    by_user = api.select(a.caller, user_id=f"eq.{b.id}")
    checks.answer(
        a.caller,
        "select B's events by user_id",
        by_user,
        expected="no rows",
        ok=by_user.status == 200 and not by_user.rows,
    )
    anon_seen = api.select(anon)
    checks.answer(
        anon,
        "select events",
        anon_seen,
        expected="refused (42501) or no rows",
        ok=anon_seen.refused() or (anon_seen.status == 200 and not anon_seen.rows),
    )
    all_seen = api.select(service, user_id=in_list([a.id, b.id]))
    checks.answer(
        service,
        "select both users' events",
        all_seen,
        expected="every row of both users",
        ok=all_seen.status == 200 and (a_ids | b_ids) <= all_seen.ids(),
    )
    checks.assert_all()


def test_insert_own_rows_only(
    api: DataApi, users: LiveUsers, anon: Caller, service: Caller, report: LiveReport
) -> None:
    a, b = users.a, users.b
    checks = Checks(report, AREA)

    own = event(a.id)
    answer = api.insert(a.caller, [own])
    row = stored(api, service, own["id"]).get(own["id"])
    checks.answer(
        a.caller,
        "insert own event",
        answer,
        expected="201, stored as A's",
        ok=answer.status == 201 and row is not None and row["user_id"] == a.id,
    )

    attempts: list[tuple[Caller, str, dict[str, Any]]] = [
        (a.caller, "insert an event for B", event(b.id)),
        (a.caller, "insert own event with is_deleted set", event(a.id, is_deleted=True)),
        (anon, "insert an event for A", event(a.id)),
    ]
    for who, what, refused_row in attempts:
        answer = api.insert(who, [refused_row])
        left = stored(api, service, refused_row["id"])
        checks.answer(
            who,
            what,
            answer,
            expected=f"{REFUSED}; nothing stored",
            ok=answer.refused() and not left,
        )

    for_b = event(b.id)
    answer = api.insert(service, [for_b])
    checks.answer(
        service,
        "insert an event for B",
        answer,
        expected="201, stored as B's",
        ok=answer.status == 201 and for_b["id"] in stored(api, service, for_b["id"]),
    )
    checks.assert_all()


def test_update_is_a_one_way_soft_delete_of_own_rows(
    api: DataApi, users: LiveUsers, anon: Caller, service: Caller, report: LiveReport
) -> None:
    a, b = users.a, users.b
    mine, untouched, theirs = event(a.id), event(a.id), event(b.id)
    seed(api, service, [mine, untouched, theirs])
    checks = Checks(report, AREA)

    answer = api.update(a.caller, {"is_deleted": True}, id=f"eq.{mine['id']}")
    checks.answer(
        a.caller,
        "soft-delete own event (is_deleted = true)",
        answer,
        expected="200, 1 row marked deleted",
        ok=answer.status == 200
        and len(answer.rows) == 1
        and stored(api, service, mine["id"])[mine["id"]]["is_deleted"] is True,
    )
    answer = api.update(a.caller, {"is_deleted": False}, id=f"eq.{mine['id']}")
    checks.answer(
        a.caller,
        "restore own soft-deleted event",
        answer,
        expected=f"{REFUSED}; still deleted",
        ok=answer.refused() and stored(api, service, mine["id"])[mine["id"]]["is_deleted"] is True,
    )
    for what, patch in (
        ("change value of own event", {"value": {"platform": "android"}}),
        ("change event_type of own event", {"event_type": "goal_complete"}),
        ("move own event to B (change user_id)", {"user_id": b.id}),
        ("change timestamp of own event", {"timestamp": "2024-01-01T00:00:00Z"}),
    ):
        answer = api.update(a.caller, patch, id=f"eq.{untouched['id']}")
        after = stored(api, service, untouched["id"])[untouched["id"]]
        checks.answer(
            a.caller,
            what,
            answer,
            expected=f"{REFUSED}; row unchanged",
            ok=answer.refused()
            and after["user_id"] == a.id
            and after["event_type"] == untouched["event_type"]
            and after["value"] == untouched["value"]
            and after["is_deleted"] is False,
        )
    answer = api.update(a.caller, {"is_deleted": True}, id=f"eq.{theirs['id']}")
    checks.answer(
        a.caller,
        "soft-delete B's event",
        answer,
        expected="0 rows changed; B's row not deleted",
        ok=((answer.status == 200 and not answer.rows) or answer.refused())
        and stored(api, service, theirs["id"])[theirs["id"]]["is_deleted"] is False,
    )
    answer = api.update(anon, {"is_deleted": True}, id=f"eq.{untouched['id']}")
    checks.answer(
        anon,
        "soft-delete A's event",
        answer,
        expected=f"{REFUSED}; row not deleted",
        ok=answer.refused()
        and stored(api, service, untouched["id"])[untouched["id"]]["is_deleted"] is False,
    )
    checks.assert_all()


def test_only_service_role_deletes(
    api: DataApi, users: LiveUsers, anon: Caller, service: Caller, report: LiveReport
) -> None:
    a, b = users.a, users.b
    mine, theirs = event(a.id), event(b.id)
    seed(api, service, [mine, theirs])
    checks = Checks(report, AREA)

    for who, what, target in (
        (a.caller, "hard-delete own event", mine),
        (a.caller, "delete B's event", theirs),
        (anon, "delete A's event", mine),
    ):
        answer = api.delete(who, id=f"eq.{target['id']}")
        still_there = target["id"] in stored(api, service, target["id"])
        checks.answer(
            who,
            what,
            answer,
            expected=f"{REFUSED} or 0 rows; row still there",
            ok=(answer.refused() or (answer.status == 200 and not answer.rows)) and still_there,
        )
    answer = api.delete(service, id=f"eq.{theirs['id']}")
    checks.answer(
        service,
        "delete B's event",
        answer,
        expected="200, 1 row deleted",
        ok=answer.status == 200
        and answer.ids() == {theirs["id"]}
        and not stored(api, service, theirs["id"]),
    )
    checks.assert_all()
