"""Row isolation under concurrency: many API sessions at once, every row read checked.

Each simulated user has its own connection, logs in as `authenticator` and runs requests the
way PostgREST does (see localdb.api_roles). For a bounded time every user, interleaved with
all the others, inserts its own events, reads everything it can see, and tries to read, change,
soft-delete and insert other users' events, read their dead-lettered failures and erase their
data. anon sessions try to read and write both; service_role sessions insert events for random
users and dead-letter failures as the functions do. Every row any user reads is checked against its
owner; at the end each user's visible set must be exactly the rows that belong to it.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from localdb.api_roles import request_as
from localdb.cluster import Cluster

USER_NAMESPACE = uuid.UUID("5f3c1d2e-8a4b-4c6d-9e0f-112233445566")


@dataclass
class Report:
    users: int
    anon_sessions: int
    service_sessions: int
    seconds: float
    operations: Counter[str] = field(default_factory=Counter)
    rows_checked: int = 0
    problems: int = 0
    """Every leak, unexpected error and final mismatch; the lists below keep the first 100."""
    leaks: list[str] = field(default_factory=list)
    unexpected_errors: list[str] = field(default_factory=list)
    final_mismatches: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.problems == 0


def user_id(n: int) -> str:
    return str(uuid.uuid5(USER_NAMESPACE, f"isolation-user-{n}"))


def run(
    cluster: Cluster,
    dbname: str,
    *,
    users: int = 50,
    anon_sessions: int = 2,
    service_sessions: int = 2,
    seconds: float = 3.0,
    rng_seed: int = 7,
) -> Report:
    ids = [user_id(n) for n in range(users)]
    with cluster.connect("postgres", dbname) as owner, owner.cursor() as cur:
        cur.executemany(
            "insert into auth.users (id, aud, role, email) values "
            "(%s, 'authenticated', 'authenticated', %s) on conflict (id) do nothing",
            [(uid, f"isolation-{n}@example.test") for n, uid in enumerate(ids)],
        )
    report = Report(users, anon_sessions, service_sessions, seconds)
    lock = threading.Lock()
    owned: dict[str, set[str]] = {uid: set() for uid in ids}
    deadline = time.monotonic() + seconds
    start_line = threading.Barrier(users + anon_sessions + service_sessions)

    def record(op: str, rows: int = 0) -> None:
        with lock:
            report.operations[op] += 1
            report.rows_checked += rows

    def problem(kind: list[str], text: str) -> None:
        with lock:
            report.problems += 1
            if len(kind) < 100:
                kind.append(text)

    def as_user(me: str, rng: random.Random) -> None:
        with psycopg.connect(cluster.dsn("authenticator", dbname)) as conn:
            start_line.wait()
            while time.monotonic() < deadline:
                other = rng.choice(ids)
                # Insert an event of my own.
                event = str(uuid.uuid4())
                with request_as(conn, "authenticated", me):
                    conn.execute(
                        "insert into public.engagement_events (id, user_id, event_type, value)"
                        " values (%s, %s, 'app_open', '{\"platform\": \"ios\"}')",
                        (event, me),
                    )
                with lock:
                    owned[me].add(event)
                record("insert own event")
                # Read everything visible; every row must be mine.
                with request_as(conn, "authenticated", me):
                    rows = conn.execute(
                        "select id, user_id from public.engagement_events"
                    ).fetchall()
                for row_id, owner_id in rows:
                    if str(owner_id) != me:
                        problem(report.leaks, f"user {me} read event {row_id} of {owner_id}")
                record("select all visible events", len(rows))
                if other == me:
                    continue
                # Read another user's events directly.
                with request_as(conn, "authenticated", me):
                    seen = conn.execute(
                        "select count(*) from public.engagement_events where user_id = %s",
                        (other,),
                    ).fetchone()
                if seen and seen[0]:
                    problem(report.leaks, f"user {me} read {seen[0]} events of {other}")
                record("select another user's events")
                # Soft-delete another user's events.
                with request_as(conn, "authenticated", me):
                    changed = conn.execute(
                        "update public.engagement_events set is_deleted = true where user_id = %s",
                        (other,),
                    ).rowcount
                if changed:
                    problem(report.leaks, f"user {me} soft-deleted {changed} events of {other}")
                record("soft-delete another user's events")
                # Insert an event in another user's name: must be refused.
                for op, statement in (
                    (
                        "insert an event for another user",
                        "insert into public.engagement_events (user_id, event_type) values (%s, 'app_open')",
                    ),
                    (
                        "delete another user's events",
                        "delete from public.engagement_events where user_id = %s",
                    ),
                    (
                        "read another user's dead-lettered failures",
                        "select count(*) from private.engagement_event_failures where user_id = %s",
                    ),
                    (
                        "erase another user's data",
                        "select public.erase_engagement_user(%s)",
                    ),
                ):
                    try:
                        with request_as(conn, "authenticated", me):
                            conn.execute(statement, (other,))
                        problem(report.leaks, f"user {me} could {op} ({other})")
                    except psycopg.errors.InsufficientPrivilege:
                        record(op)

    def as_anon() -> None:
        with psycopg.connect(cluster.dsn("authenticator", dbname)) as conn:
            start_line.wait()
            while time.monotonic() < deadline:
                for op, statement in (
                    ("anon select", "select id from public.engagement_events limit 10"),
                    (
                        "anon insert",
                        "insert into public.engagement_events (user_id, event_type)"
                        f" values ('{ids[0]}', 'app_open')",
                    ),
                    ("anon soft-delete", "update public.engagement_events set is_deleted = true"),
                    (
                        "anon read dead-lettered failures",
                        "select count(*) from private.engagement_event_failures",
                    ),
                    ("anon erase a user", f"select public.erase_engagement_user('{ids[0]}')"),
                ):
                    try:
                        with request_as(conn, "anon"):
                            conn.execute(statement.encode())
                        problem(report.leaks, f"{op} was allowed")
                    except psycopg.errors.InsufficientPrivilege:
                        record(op)

    def as_service(rng: random.Random) -> None:
        with psycopg.connect(cluster.dsn("authenticator", dbname)) as conn:
            start_line.wait()
            while time.monotonic() < deadline:
                target = rng.choice(ids)
                event = str(uuid.uuid4())
                with request_as(conn, "service_role"):
                    conn.execute(
                        "insert into public.engagement_events (id, user_id, event_type, value)"
                        " values (%s, %s, 'steps_import', '{\"steps\": 1000}')",
                        (event, target),
                    )
                with lock:
                    owned[target].add(event)
                record("service_role insert for a user")
                # The functions' dead-letter path, as service_role, alongside everything else.
                failure = {
                    "request_id": f"isolation-{event}",
                    "credential_type": "legacy_jwt",
                    "index": 0,
                    "user_id": target,
                    "event": json.dumps({"user_id": target, "event_type": "Bad"}),
                    "errors": [{"path": "/event_type", "message": "isolation run"}],
                }
                with request_as(conn, "service_role"):
                    conn.execute(
                        "select public.record_engagement_failures(%s::jsonb)",
                        (json.dumps([failure]),),
                    )
                record("service_role dead-letter a failure")

    def guarded(target: Any, *args: Any) -> None:
        try:
            target(*args)
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none is lost
            problem(report.unexpected_errors, f"{type(exc).__name__}: {exc}")
            start_line.abort()

    rng = random.Random(rng_seed)
    threads = [
        threading.Thread(target=guarded, args=(as_user, uid, random.Random(rng.random())))
        for uid in ids
    ]
    threads += [threading.Thread(target=guarded, args=(as_anon,)) for _ in range(anon_sessions)]
    threads += [
        threading.Thread(target=guarded, args=(as_service, random.Random(rng.random())))
        for _ in range(service_sessions)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Afterwards: each user sees exactly the rows that are theirs.
    with psycopg.connect(cluster.dsn("authenticator", dbname)) as conn:
        for uid in ids:
            with request_as(conn, "authenticated", uid):
                visible = {
                    str(r[0])
                    for r in conn.execute("select id from public.engagement_events").fetchall()
                }
            report.rows_checked += len(visible)
            if visible != owned[uid]:
                missing, extra = owned[uid] - visible, visible - owned[uid]
                report.problems += 1
                report.final_mismatches.append(
                    f"user {uid}: {len(missing)} own rows not visible, {len(extra)} foreign rows visible"
                )
    return report
