"""The per-caller rate limit of batch_import: its state is in the database, so it holds across
every instance of the function."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from functions.config import Settings
from functions.errors import ConfigError
from localdb.api_roles import request_as
from tests.conftest import ClientFactory, Database, auth, event, json_body

KEY_A = "sb_secret_rate_limit_caller_a_0123456789"
KEY_B = "sb_secret_rate_limit_caller_b_0123456789"


@pytest.fixture(autouse=True)
def same_minute() -> None:
    """The limit counts per clock minute: start far enough from its end to stay inside it."""
    second = datetime.now(UTC).second
    if second >= 50:
        time.sleep(61 - second)


def batch(size: int, start_hour: int = 0) -> list[dict[str, object]]:
    return [
        event(timestamp=f"2025-08-01T{start_hour:02d}:{minute:02d}:00") for minute in range(size)
    ]


def post(
    client: FlaskClient, events: list[dict[str, object]], key: str | None = None
) -> TestResponse:
    headers = {"apikey": key} if key else auth()
    return client.post("/", json=events, headers=headers)


def test_over_the_request_limit_answers_429_with_retry_after_across_instances(
    make_client: ClientFactory,
) -> None:
    client = make_client("batch_import", RATE_LIMIT_REQUESTS_PER_MINUTE="3")
    assert [post(client, batch(1, hour)).status_code for hour in range(2)] == [200, 200]
    # A new instance: settings, sink and connection pool built afresh, nothing kept in memory.
    second = make_client("batch_import", RATE_LIMIT_REQUESTS_PER_MINUTE="3")
    assert post(second, batch(1, 3)).status_code == 200

    refused = post(second, batch(1, 5))
    assert refused.status_code == 429
    body = json_body(refused)
    assert body["error"] == "rate_limited"
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert body["retry_after"] == retry_after
    assert "3 requests" in body["message"]


def test_event_limit_counts_events_and_refused_requests_count_nothing(
    db: Database, make_client: ClientFactory
) -> None:
    client = make_client("batch_import", MAX_BATCH_EVENTS="5", RATE_LIMIT_EVENTS_PER_MINUTE="5")
    assert post(client, batch(3, 1)).status_code == 200
    assert post(client, batch(3, 2)).status_code == 429
    # The refused 3 were not counted: 2 more still fit in this minute.
    assert post(client, batch(2, 3)).status_code == 200
    assert post(client, batch(1, 4)).status_code == 429
    with db.connect() as conn:
        row = conn.execute("select requests, events from private.rate_limit_windows").fetchone()
    assert row == (2, 5)


def test_each_secret_key_is_its_own_caller(make_client: ClientFactory) -> None:
    client = make_client(
        "batch_import",
        RATE_LIMIT_REQUESTS_PER_MINUTE="1",
        SUPABASE_SECRET_KEYS=f"{KEY_A},{KEY_B}",
    )
    assert post(client, batch(1, 1), KEY_A).status_code == 200
    assert post(client, batch(1, 2), KEY_A).status_code == 429
    assert post(client, batch(1, 3), KEY_B).status_code == 200


def test_the_database_never_sees_the_credential(db: Database, make_client: ClientFactory) -> None:
    client = make_client("batch_import", SUPABASE_SECRET_KEYS=KEY_A)
    assert post(client, batch(1), KEY_A).status_code == 200
    with db.connect() as conn:
        callers = [row[0] for row in conn.execute("select caller from private.rate_limit_windows")]
    assert len(callers) == 1
    assert callers[0].startswith("secret_key:")
    assert KEY_A not in callers[0]
    assert KEY_A[10:] not in callers[0]


def test_zero_turns_the_limit_off_and_the_database_is_not_asked(
    db: Database, make_client: ClientFactory
) -> None:
    with db.connect() as conn:
        conn.execute(
            "drop function public.take_engagement_rate_limit(text, integer, integer, integer)"
        )
    client = make_client(
        "batch_import", RATE_LIMIT_REQUESTS_PER_MINUTE="0", RATE_LIMIT_EVENTS_PER_MINUTE="0"
    )
    for hour in range(3):
        assert post(client, batch(1, hour)).status_code == 200


def test_concurrent_callers_never_get_past_the_limit(db: Database) -> None:
    def take(_: int) -> int:
        with (
            db.connect("authenticator", autocommit=False) as conn,
            request_as(conn, "service_role") as c,
        ):
            row = c.execute(
                "select public.take_engagement_rate_limit('burst', 1, 10, 0)"
            ).fetchone()
        return int(row[0]) if row else -1

    with ThreadPoolExecutor(max_workers=8) as pool:
        waits = list(pool.map(take, range(24)))
    assert waits.count(0) == 10
    assert all(1 <= wait <= 60 for wait in waits if wait)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_spend_or_reset_a_callers_allowance(db: Database, role: str) -> None:
    import psycopg

    with db.connect("authenticator", autocommit=False) as conn:
        for statement in (
            "select public.take_engagement_rate_limit('x', 1, 10, 0)",
            "delete from private.rate_limit_windows",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), request_as(conn, role) as c:
                c.execute(statement)


def test_an_event_limit_below_the_batch_limit_fails_at_cold_start() -> None:
    env = {
        "SUPABASE_JWT_SECRET": "x" * 32,
        "DATABASE_URL": "postgresql://localhost/db",
        "MAX_BATCH_EVENTS": "1000",
        "RATE_LIMIT_EVENTS_PER_MINUTE": "999",
    }
    with pytest.raises(ConfigError, match="RATE_LIMIT_EVENTS_PER_MINUTE"):
        Settings.from_env(env)
    with pytest.raises(ConfigError, match="RATE_LIMIT_REQUESTS_PER_MINUTE must be 0"):
        Settings.from_env(
            {**env, "RATE_LIMIT_EVENTS_PER_MINUTE": "0", "RATE_LIMIT_REQUESTS_PER_MINUTE": "-1"}
        )
    defaults = Settings.from_env({**env, "RATE_LIMIT_EVENTS_PER_MINUTE": ""})
    assert (defaults.rate_limit_requests_per_minute, defaults.rate_limit_events_per_minute) == (
        600,
        600_000,
    )
