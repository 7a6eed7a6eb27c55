"""Faults of the database under the direct sink, through the real batch_import HTTP handler.

Every test here sends real requests to the functions-framework app and checks what a caller
sees (status, ``Retry-After``, body) and what the database holds afterwards (rows counted by
id). Tests that stop the server use their own cluster (``fault_cluster``), never the session's.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from functions import handlers
from functions.sinks.postgres import APPLICATION_NAME, PostgresSink
from localdb import cluster as localcluster
from tests.conftest import TEMPLATE, AppFactory, Database, json_body

pytestmark = pytest.mark.db

SECRET = "fault-test-jwt-secret-with-at-least-32-characters"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
SINCE = "2025-01-01T00:00:00Z"  # the seed has nothing this recent; every test's rows are later


def auth() -> dict[str, str]:
    now = int(time.time())
    token = jwt.encode(
        {"role": "service_role", "iat": now, "exp": now + 3600}, SECRET, algorithm="HS256"
    )
    return {"Authorization": f"Bearer {token}"}


def batch(size: int, *, start: datetime | None = None) -> list[dict[str, Any]]:
    """``size`` valid events; every other one carries an event_id, the rest get derived ids."""
    first = start or datetime(2025, 6, 1, tzinfo=UTC)
    events: list[dict[str, Any]] = []
    for i in range(size):
        event: dict[str, Any] = {
            "user_id": ANA if i % 2 else BEN,
            "event_type": "app_open",
            "timestamp": (first + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "value": {"platform": "ios"},
        }
        if i % 2 == 0:
            event["event_id"] = str(uuid.uuid4())
        events.append(event)
    return events


def rows_of(db: Database) -> tuple[int, int]:
    """(rows, distinct ids) imported by the tests: a duplicate shows as rows > ids."""
    with db.connect() as conn:
        found = conn.execute(
            "select count(*), count(distinct id) from public.engagement_events"
            ' where "timestamp" >= %s',
            (SINCE,),
        ).fetchone()
    assert found is not None
    return int(found[0]), int(found[1])


def stored_ids(db: Database, ids: list[str]) -> int:
    with db.connect() as conn:
        found = conn.execute(
            "select count(*) from public.engagement_events where id = any(%s::uuid[])", (ids,)
        ).fetchone()
    assert found is not None
    return int(found[0])


def assert_unavailable(response: TestResponse) -> dict[str, Any]:
    """A 503 the way the contract promises it: Retry-After, a JSON body, nothing stored."""
    assert response.status_code == 503, response.json
    body = json_body(response)
    assert body["error"] == "store_unavailable"
    assert body["stored"] == 0
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    assert body["retry_after"] == retry_after
    assert body["request_id"] == response.headers["X-Request-Id"]
    return body


def sink_backends(db: Database, *, waiting_on: str | None = None) -> list[int]:
    """Backend pids of the direct sink's sessions (only waiting ones when asked)."""
    with db.cluster.connect(localcluster.SUPERUSER, localcluster.ADMIN_DB) as admin:
        found = admin.execute(
            "select pid from pg_stat_activity where application_name = %s and datname = %s"
            " and (%s::text is null or wait_event_type = %s or wait_event = %s)",
            (APPLICATION_NAME, db.name, waiting_on, waiting_on, waiting_on),
        ).fetchall()
    pids: list[int] = []
    for (pid,) in found:
        assert isinstance(pid, int), pid
        pids.append(pid)
    return pids


def wait_for_sink(db: Database, waiting_on: str, count: int = 1) -> None:
    """Return once ``count`` sink sessions wait on ``waiting_on``; fail after 30 s."""
    for _ in range(1500):
        if len(sink_backends(db, waiting_on=waiting_on)) >= count:
            return
        time.sleep(0.02)
    pytest.fail(f"the sink never waited on {waiting_on}")


def post_in_background(
    client: FlaskClient, body: Any, into: list[TestResponse]
) -> threading.Thread:
    thread = threading.Thread(
        target=lambda: into.append(client.post("/", json=body, headers=auth()))
    )
    thread.start()
    return thread


ServeApp = Callable[..., FlaskClient]


@pytest.fixture
def serve(function_app: AppFactory) -> ServeApp:
    """A factory of batch_import apps (functions-framework) with the direct sink on a URL."""

    def factory(database_url: str, **env: str) -> FlaskClient:
        return function_app(
            "batch_import",
            SUPABASE_JWT_SECRET=SECRET,
            DATABASE_URL=database_url,
            SUPABASE_URL=None,
            **env,
        ).test_client()

    return factory


@pytest.fixture(scope="module")
def fault_cluster() -> Iterator[localcluster.Cluster]:
    """A cluster of its own that tests may stop, crash and restart.

    Commits are synchronous here, as on Supabase: the session cluster's asynchronous commit
    would lose the last acknowledged transactions in a crash, which is not the fault tested.
    """
    faulty = localcluster.start(
        max_connections=60, extra_settings=("shared_buffers=32MB", "synchronous_commit=on")
    )
    try:
        faulty.prepare_database(TEMPLATE)
        yield faulty
    finally:
        faulty.stop()


@pytest.fixture
def fault_db(fault_cluster: localcluster.Cluster) -> Iterator[Database]:
    fault_cluster.start_server()  # a failed test may have left it down
    name = fault_cluster.clone(TEMPLATE)
    try:
        yield Database(fault_cluster, name)
    finally:
        fault_cluster.start_server()
        fault_cluster.drop(name)


# -- the database goes away in the middle of a batch ------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_database_stopped_mid_batch_commits_nothing_and_the_retry_stores_each_event_once(
    fault_db: Database, serve: ServeApp, mode: str
) -> None:
    client = serve(fault_db.url)
    events = batch(10_000)
    responses: list[TestResponse] = []
    # Another session holds the table, so the import's insert is in flight (waiting for the
    # lock, its 10,000 rows already copied to the server) when the server goes down.
    holder = fault_db.connect(autocommit=False)
    holder.execute("lock table public.engagement_events in exclusive mode")
    writer = post_in_background(client, events, responses)
    wait_for_sink(fault_db, "Lock")
    fault_db.cluster.stop_server(mode)
    writer.join(timeout=60)
    holder.close()

    (response,) = responses
    assert_unavailable(response)
    fault_db.cluster.start_server()
    assert rows_of(fault_db) == (0, 0)

    again = client.post("/", json=events, headers=auth())
    assert again.status_code == 200, again.json
    assert (json_body(again)["inserted"], json_body(again)["duplicates"]) == (10_000, 0)
    assert rows_of(fault_db) == (10_000, 10_000)
    given_ids = [e["event_id"] for e in events if "event_id" in e]
    assert stored_ids(fault_db, given_ids) == 5_000

    third = client.post("/", json=events, headers=auth())
    assert (json_body(third)["inserted"], json_body(third)["duplicates"]) == (0, 10_000)
    assert rows_of(fault_db) == (10_000, 10_000)


def test_a_lost_commit_acknowledgement_is_reported_as_duplicates_on_retry(
    fault_db: Database, serve: ServeApp
) -> None:
    # A synchronous standby that never comes makes COMMIT wait after it is written locally:
    # the server dies there, so the transaction is durable but the caller never heard so.
    cluster = fault_db.cluster
    with cluster.admin() as admin:
        admin.execute("alter system set synchronous_standby_names = 'nobody_listens'")
        admin.execute("select pg_reload_conf()")
    try:
        # No rate limit: its own transaction would be the one left waiting for the standby.
        client = serve(
            fault_db.url, RATE_LIMIT_REQUESTS_PER_MINUTE="0", RATE_LIMIT_EVENTS_PER_MINUTE="0"
        )
        events = batch(200)
        responses: list[TestResponse] = []
        writer = post_in_background(client, events, responses)
        wait_for_sink(fault_db, "SyncRep")
        with cluster.admin() as admin:  # takes effect at the restart below
            admin.execute("alter system reset synchronous_standby_names")
        cluster.stop_server("immediate")
        writer.join(timeout=60)
    finally:
        cluster.start_server()
        with cluster.admin() as admin:
            admin.execute("alter system reset synchronous_standby_names")
            admin.execute("select pg_reload_conf()")

    (response,) = responses
    assert_unavailable(response)
    assert rows_of(fault_db) == (200, 200)  # committed, though the caller was told 503

    again = client.post("/", json=events, headers=auth())
    assert again.status_code == 200, again.json
    assert (json_body(again)["inserted"], json_body(again)["duplicates"]) == (0, 200)
    assert rows_of(fault_db) == (200, 200)


# -- timeouts -----------------------------------------------------------------------------------


def test_statement_timeout_during_an_import_is_503_and_nothing_partial(
    db: Database, serve: ServeApp
) -> None:
    # An import slower than its time budget: the rows are in, then a trigger stalls the
    # statement until the statement timeout (capped by TIME_BUDGET_SECONDS) cancels it.
    with db.connect() as owner:
        owner.execute(
            "create function public.stall() returns trigger language plpgsql"
            " set search_path = '' as $$ begin perform pg_sleep(60); return null; end $$"
        )
        owner.execute(
            "create trigger stall after insert on public.engagement_events"
            " for each statement execute function public.stall()"
        )
    client = serve(db.url, TIME_BUDGET_SECONDS="3")
    events = batch(1_000)

    response = client.post("/", json=events, headers=auth())

    body = assert_unavailable(response)
    assert body["store_code"] == "57014"
    assert rows_of(db) == (0, 0)
    with db.connect() as owner:
        owner.execute("drop trigger stall on public.engagement_events")
    again = client.post("/", json=events, headers=auth())
    assert (again.status_code, json_body(again)["inserted"]) == (200, 1_000)
    assert rows_of(db) == (1_000, 1_000)


def test_lock_timeout_on_a_conflicting_row_is_503_and_nothing_partial(
    db: Database, serve: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sink's own lock timeout, short here so that the test is quick (default 5 s).
    monkeypatch.setattr(
        handlers,
        "_make_sink",
        lambda settings: PostgresSink(str(settings.database_url), lock_timeout_ms=300),
    )
    client = serve(db.url)
    events = batch(1_000)
    contested = events[500]
    # Another client's uncommitted transaction already inserted one event of this batch: the
    # import must wait for it to decide whether that row is a duplicate.
    with db.connect(autocommit=False) as other:
        other.execute(
            "insert into public.engagement_events (id, user_id, event_type) values (%s, %s, %s)",
            (contested["event_id"], contested["user_id"], "app_open"),
        )
        response = client.post("/", json=events, headers=auth())
        body = assert_unavailable(response)
        assert body["store_code"] == "55P03"
        other.rollback()

    assert rows_of(db) == (0, 0)
    again = client.post("/", json=events, headers=auth())
    assert (again.status_code, json_body(again)["inserted"]) == (200, 1_000)


# -- connection refused, at cold start and mid-life ------------------------------------------


def test_database_down_at_cold_start_then_back_without_a_new_app(
    fault_db: Database, serve: ServeApp
) -> None:
    fault_db.cluster.stop_server("fast")
    client = serve(fault_db.url)
    events = batch(50)

    first = client.post("/", json=events, headers=auth())
    assert_unavailable(first)

    fault_db.cluster.start_server()
    second = client.post("/", json=events, headers=auth())
    assert second.status_code == 200, second.json
    assert (json_body(second)["inserted"], json_body(second)["duplicates"]) == (50, 0)
    assert rows_of(fault_db) == (50, 50)


def fill_the_pool(db: Database, client: FlaskClient, connections: int) -> None:
    """Make the sink open ``connections`` connections: requests that overlap inside the
    database (a table lock holds them) each need their own."""
    responses: list[TestResponse] = []
    with db.connect(autocommit=False) as holder:
        holder.execute("lock table public.engagement_events in exclusive mode")
        writers = [
            post_in_background(
                client, batch(10, start=datetime(2025, 3, 1 + n, tzinfo=UTC)), responses
            )
            for n in range(connections)
        ]
        wait_for_sink(db, "Lock", count=connections)
        holder.rollback()
    for writer in writers:
        writer.join(timeout=30)
    assert [r.status_code for r in responses] == [200] * connections
    assert len(sink_backends(db)) == connections


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_server_restart_between_requests_costs_the_caller_nothing(
    fault_db: Database, serve: ServeApp, mode: str
) -> None:
    client = serve(fault_db.url)
    fill_the_pool(fault_db, client, connections=4)

    fault_db.cluster.stop_server(mode)
    fault_db.cluster.start_server()
    # Every pooled connection is dead now; the first request after the restart still works.
    events = batch(30)
    response = client.post("/", json=events, headers=auth())

    assert response.status_code == 200, response.json
    assert json_body(response)["inserted"] == 30
    assert rows_of(fault_db) == (70, 70)


def test_a_request_while_the_server_is_down_is_503_and_the_next_one_recovers(
    fault_db: Database, serve: ServeApp
) -> None:
    client = serve(fault_db.url)
    fill_the_pool(fault_db, client, connections=2)
    fault_db.cluster.stop_server("immediate")
    events = batch(30)

    assert_unavailable(client.post("/", json=events, headers=auth()))

    fault_db.cluster.start_server()
    response = client.post("/", json=events, headers=auth())
    assert (response.status_code, json_body(response)["inserted"]) == (200, 30)
    assert rows_of(fault_db) == (50, 50)


# -- credentials the database refuses -----------------------------------------------------------


@pytest.fixture
def password_role(fault_db: Database) -> Iterator[str]:
    """A login role that must give a password (scram) on this cluster; the others stay trust."""
    role = f"pw_{uuid.uuid4().hex[:8]}"
    with fault_db.cluster.admin() as admin:
        admin.execute(f"create role {role} login password 'the-right-one'")
        admin.execute(f"grant postgres to {role}")
    hba = fault_db.cluster.datadir / "pg_hba.conf"
    original = hba.read_text()
    with hba.open("r+") as file:  # rewritten in place: the server's account keeps owning it
        file.write(f"host all {role} 127.0.0.1/32 scram-sha-256\n{original}")
    with fault_db.cluster.admin() as admin:
        admin.execute("select pg_reload_conf()")
    try:
        yield role
    finally:
        with hba.open("r+") as file:
            file.write(original)
            file.truncate()
        with fault_db.cluster.admin() as admin:
            admin.execute("select pg_reload_conf()")
            admin.execute(f"drop role {role}")


def server_log_mentions(cluster: localcluster.Cluster, text: str) -> int:
    return (cluster.basedir / "server.log").read_text(errors="replace").count(text)


def test_a_wrong_database_password_is_502_and_not_retried(
    fault_db: Database, serve: ServeApp, password_role: str
) -> None:
    url = f"postgresql://{password_role}:not-the-password@127.0.0.1:{fault_db.cluster.port}/{fault_db.name}"
    client = serve(url)
    complaint = f'password authentication failed for user "{password_role}"'
    before = server_log_mentions(fault_db.cluster, complaint)

    response = client.post("/", json=batch(5), headers=auth())

    assert response.status_code == 502, response.json
    body = json_body(response)
    assert body["error"] == "store_error"
    assert body["store_code"] == "28P01"
    assert "not-the-password" not in response.get_data(as_text=True)
    assert "Retry-After" not in response.headers
    # The database saw one attempt: a wrong password is not worth three.
    assert server_log_mentions(fault_db.cluster, complaint) - before == 1
    assert rows_of(fault_db) == (0, 0)


@pytest.mark.parametrize(
    ("user", "dbname", "code"),
    [("nobody_here", None, "28000"), ("postgres", "no_such_database", "3D000")],
    ids=["unknown-role", "unknown-database"],
)
def test_a_database_url_that_names_nothing_is_502(
    db: Database, serve: ServeApp, user: str, dbname: str | None, code: str
) -> None:
    client = serve(db.cluster.url(user, dbname or db.name))

    response = client.post("/", json=batch(5), headers=auth())

    assert response.status_code == 502, response.json
    assert json_body(response)["error"] == "store_error"
    assert json_body(response)["store_code"] == code
    assert "Retry-After" not in response.headers


# -- a client retrying the same batch concurrently ----------------------------------------------


def test_the_same_batch_sent_concurrently_from_eight_connections_is_stored_once(
    db: Database, serve: ServeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock timeout long enough for eight validations on a busy machine while the lock holds.
    monkeypatch.setattr(
        handlers,
        "_make_sink",
        lambda settings: PostgresSink(str(settings.database_url), lock_timeout_ms=30_000),
    )
    client = serve(db.url)
    events = batch(2_000)
    responses: list[TestResponse] = []
    start = threading.Barrier(8)
    deadlocks_before = server_log_mentions(db.cluster, "deadlock detected")

    def send(order: int) -> None:
        # Each copy in its own order, as retries from different workers would be.
        mine = events[:]
        random.Random(order).shuffle(mine)  # noqa: S311 - an order, not a secret
        start.wait()
        responses.append(client.application.test_client().post("/", json=mine, headers=auth()))

    senders = [threading.Thread(target=send, args=(n,)) for n in range(8)]
    # The copies meet inside the database: a table lock holds the first ones (as many as the
    # sink has connections) until all of them are waiting, then lets them go at once.
    with db.connect(autocommit=False) as holder:
        holder.execute("lock table public.engagement_events in exclusive mode")
        for sender in senders:
            sender.start()
        wait_for_sink(db, "Lock", count=4)
        holder.rollback()
    for sender in senders:
        sender.join(timeout=120)

    assert [r.status_code for r in responses] == [200] * 8, [r.json for r in responses]
    assert sum(json_body(r)["inserted"] for r in responses) == 2_000
    assert sum(json_body(r)["duplicates"] for r in responses) == 7 * 2_000
    assert all(json_body(r)["inserted"] + json_body(r)["duplicates"] == 2_000 for r in responses)
    assert rows_of(db) == (2_000, 2_000)
    # The copies came in different orders and still never deadlocked (each deadlock costs a
    # second, a retry, and after three a 503).
    assert server_log_mentions(db.cluster, "deadlock detected") == deadlocks_before
