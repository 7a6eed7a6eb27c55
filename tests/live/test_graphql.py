"""GraphQL (pg_graphql at /graphql/v1): a signed-in user's collection query returns only that
user's rows, the update mutation cannot soft-delete another user's row, and anon gets none.

pg_graphql is off on new projects; where it is off the endpoint answers with an error saying
so, and the check is skipped with that reason. The collection is named
`engagementEventsCollection` when the schema has pg_graphql's `inflect_names` on and
`engagement_eventsCollection` otherwise; both are tried.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.live.api import Caller, DataApi, event, in_list
from tests.live.checks import Checks
from tests.live.conftest import LiveEnv, LiveUsers
from tests.live.report import LiveReport

AREA = "GraphQL (pg_graphql) on engagement_events"
NAMINGS = (
    ("engagementEventsCollection", "userId"),  # inflect_names on
    ("engagement_eventsCollection", "user_id"),  # pg_graphql's default: names as in SQL
)
UPDATES = {
    "engagementEventsCollection": ("updateEngagementEventsCollection", "isDeleted"),
    "engagement_eventsCollection": ("updateengagement_eventsCollection", "is_deleted"),
}
PAGE = 30  # pg_graphql's default page size limit


def ask(http: httpx.Client, url: str, who: Caller, collection: str, user_field: str) -> Any:
    query = f"{{ {collection}(first: {PAGE}) {{ edges {{ node {{ id {user_field} }} }} }} }}"
    response = http.post(f"{url}/graphql/v1", json={"query": query}, headers=dict(who.headers))
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def error_messages(body: Any) -> list[str]:
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        return [str(e.get("message", e)) for e in body["errors"] if isinstance(e, dict)]
    if isinstance(body, dict) and body.get("message"):  # a PostgREST error (e.g. PGRST202)
        return [f"{body.get('code')}: {body['message']}"]
    return []


def nodes(body: Any, collection: str) -> list[dict[str, Any]] | None:
    data = body.get("data") if isinstance(body, dict) else None
    found = data.get(collection) if isinstance(data, dict) else None
    if not isinstance(found, dict):
        return None
    return [e["node"] for e in found.get("edges", []) if isinstance(e, dict) and "node" in e]


def unavailable_reason(status: int, body: Any) -> str | None:
    """Why GraphQL cannot be checked on this project at all, from the endpoint's answer."""
    messages = error_messages(body)
    if any("pg_graphql extension is not enabled" in m for m in messages):
        return "pg_graphql is not enabled on this project (the endpoint says so)"
    if status == 404 or (isinstance(body, dict) and str(body.get("code", "")).startswith("PGRST")):
        return f"/graphql/v1 is not served ({status} {'; '.join(messages)})"
    return None


def test_graphql_collection_returns_only_own_rows(
    live_env: LiveEnv,
    http: httpx.Client,
    api: DataApi,
    users: LiveUsers,
    anon: Caller,
    service: Caller,
    report: LiveReport,
) -> None:
    a, b = users.a, users.b
    rows = [event(a.id), event(b.id)]
    seeded = api.insert(service, rows)
    assert seeded.status == 201, f"service_role could not seed rows: {seeded.describe()}"
    checks = Checks(report, AREA)

    naming: tuple[str, str] | None = None
    tried: list[str] = []
    for collection, user_field in NAMINGS:
        status, body = ask(http, live_env.url, a.caller, collection, user_field)
        why = unavailable_reason(status, body)
        if why is not None:
            checks.skip(a.name, "query the events collection", expected="own rows only", why=why)
            pytest.skip(why)
        if nodes(body, collection) is not None:
            naming = (collection, user_field)
            break
        tried.append(f"{collection}: {status} {'; '.join(error_messages(body))[:200]}")
    if naming is None:
        why = (
            "pg_graphql answers, but engagement_events is not in the schema a signed-in user "
            "sees (" + " / ".join(tried) + ")"
        )
        checks.skip(a.name, "query the events collection", expected="own rows only", why=why)
        pytest.skip(why)
    collection, user_field = naming
    report.note(f"GraphQL collection name on this project: {collection}")

    for user, own_row in ((a, rows[0]), (b, rows[1])):
        status, body = ask(http, live_env.url, user.caller, collection, user_field)
        got = nodes(body, collection) or []
        ids = {str(n.get("id")) for n in got}
        everything_own = api.select(service, user_id=f"eq.{user.id}").ids()
        checks.check(
            user.caller,
            f"query {collection}",
            expected="only the user's own rows",
            ok=status == 200
            and own_row["id"] in ids
            and all(n.get(user_field) == user.id for n in got)
            and (ids == everything_own or len(got) == PAGE),
            observed=f"{status}, {len(got)} node(s)"
            + (f"; errors: {'; '.join(error_messages(body))}" if error_messages(body) else ""),
        )
    mutation, deleted_field = UPDATES[collection]
    other_id = rows[1]["id"]
    response = http.post(
        f"{live_env.url}/graphql/v1",
        json={
            "query": f"mutation {{ {mutation}(set: {{ {deleted_field}: true }}, "
            f'filter: {{ id: {{ eq: "{other_id}" }} }}) {{ affectedCount }} }}'
        },
        headers=dict(a.caller.headers),
    )
    try:
        body = response.json()
    except ValueError:
        body = response.text
    data = body.get("data") if isinstance(body, dict) else None
    affected = (data or {}).get(mutation, {}) if isinstance(data, dict) else {}
    after = api.select(service, id=f"eq.{other_id}")
    checks.check(
        a.caller,
        f"{mutation}: soft-delete B's event",
        expected="0 rows affected (or refused); B's row not deleted",
        ok=(not affected or affected.get("affectedCount") == 0)
        and after.rows != []
        and after.rows[0]["is_deleted"] is False,
        observed=f"{response.status_code} affectedCount={(affected or {}).get('affectedCount')}"
        + (f"; errors: {'; '.join(error_messages(body))}" if error_messages(body) else ""),
    )

    status, body = ask(http, live_env.url, anon, collection, user_field)
    got = nodes(body, collection) or []
    checks.check(
        anon,
        f"query {collection}",
        expected="no rows (the collection is hidden from anon, or empty)",
        ok=not got,
        observed=f"{status}, {len(got)} node(s)"
        + (f"; errors: {'; '.join(error_messages(body))}" if error_messages(body) else ""),
    )
    both = api.select(service, id=in_list([r["id"] for r in rows]))
    checks.answer(
        service,
        "read back the rows GraphQL was asked about",
        both,
        expected="both rows unchanged",
        ok=both.ids() == {r["id"] for r in rows},
    )
    checks.assert_all()
