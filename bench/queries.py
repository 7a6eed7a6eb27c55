"""Queries at scale: the app's four read shapes over millions of events, with their plans.

Generates N events over U users in the database itself (INSERT ... SELECT generate_series, with
payloads shaped like the three known event types), then runs each query many times for random
users, the way the app runs it (as `authenticated` with the user's claims, so RLS supplies the
user filter) or the way a backend job runs it (as `service_role`), and records p50/p99 and the
`EXPLAIN (ANALYZE, BUFFERS)` of one run. The project's own index migrations
(supabase/migrations/2024122*) are applied only after a first round of measurements, so one run
shows the queries before and after them, and how long each migration takes on the full table.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench import common
from localdb import cluster as localcluster
from localdb.api_roles import request_as

OWN_MIGRATIONS = "2024122"
"""File-name prefix of the migrations this benchmark's findings produced (applied mid-run)."""

USER_PREFIX = "b0000000-0000-4000-8000-"
GOAL_PREFIX = "c0000000-0000-4000-8000-"
GOALS_PER_USER = 5
SPAN_DAYS = 90
"""Generated events are spread evenly over the 90 days before the run."""

DEFAULT_EVENTS = 1_000_000
FULL_EVENTS = 10_000_000
QUICK_EVENTS = 50_000
DEFAULT_USERS = 10_000
QUICK_USERS = 500


def user_uuid(n: int) -> str:
    """The id of generated user n (1-based), the same formula the SQL generator uses."""
    return f"{USER_PREFIX}{n:012x}"


def goal_uuid(user: int, k: int) -> str:
    """The goal_id of goal k (0..4) of generated user n, as it appears in goal_complete payloads."""
    return f"{GOAL_PREFIX}{user * GOALS_PER_USER + k:012x}"


# --- data -------------------------------------------------------------------------------------

GENERATE_USERS = """
insert into auth.users (id, aud, role, email, created_at)
select (%(prefix)s || lpad(to_hex(u), 12, '0'))::uuid, 'authenticated', 'authenticated',
       'bench-user-' || u || '@example.test', now()
from generate_series(%(lo)s::int, %(hi)s::int) as u
on conflict (id) do nothing
"""

# One chunk of events n in [lo, hi) of a data set of `total` events: event n belongs to user
# 1 + (n * 7919) % users (so every user gets the same share and a user's rows are scattered over
# the table as real arrivals would be) and happened at t_end - span * (total - n) / total, so the
# table is filled in time order. Mix: 45 % app_open, 48 % steps_import, 7 % goal_complete; 1 % of
# events are soft-deleted. Payloads carry the properties of schemas/events/*.schema.json; each
# user has 5 goals, and the user's successive goal_complete events cycle over them.
GENERATE_EVENTS = """
insert into public.engagement_events (user_id, "timestamp", event_type, value, is_deleted)
select (%(user_prefix)s || lpad(to_hex(g.u), 12, '0'))::uuid,
       g.ts,
       case when g.r < 0.45 then 'app_open' when g.r < 0.93 then 'steps_import'
            else 'goal_complete' end,
       case
         when g.r < 0.45 then jsonb_build_object(
           'platform', (array['ios', 'android', 'web'])[1 + g.n %% 3],
           'app_version', '2.' || (g.n %% 9) || '.' || (g.n %% 4),
           'os_version', (array['17.5.1', '18.1', '14', '15'])[1 + g.n %% 4],
           'session_id', gen_random_uuid(),
           'source', (array['launcher', 'push_notification', 'deep_link', 'widget',
                            'reminder'])[1 + (g.r2 * 5)::int %% 5],
           'cold_start', g.r2 < 0.3,
           'launch_duration_ms', (g.r2 * 2500)::int,
           'locale', (array['en-US', 'de-DE', 'pt-BR', 'fr-FR', 'es-ES'])[1 + g.u %% 5])
         when g.r < 0.93 then jsonb_build_object(
           'steps', (g.r2 * 18000)::int,
           'source', (array['apple_health', 'health_connect', 'google_fit', 'fitbit', 'garmin',
                            'samsung_health', 'oura', 'withings', 'polar', 'manual'])[1 + g.u %% 10],
           'period_start', to_char(date_trunc('day', g.ts), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'period_end', to_char(date_trunc('day', g.ts) + interval '1 day',
                                 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
           'device', (array['Apple Watch Series 9', 'Pixel Watch 2', 'Forerunner 265',
                            'Charge 6'])[1 + g.u %% 4],
           'external_id', md5(g.n::text))
         else jsonb_build_object(
           'goal_id', (%(goal_prefix)s
                       || lpad(to_hex(g.u * %(goals)s + g.k), 12, '0')),
           'goal_type', (array['steps', 'active_minutes', 'workout', 'sleep',
                               'hydration'])[1 + g.k],
           'target', 8000,
           'achieved', 8000 + (g.r2 * 4000)::int,
           'unit', 'steps',
           'period', 'daily',
           'streak_days', (g.r2 * 40)::int)
       end,
       g.r3 < 0.01
from (
    select n, 1 + (n * 7919) %% %(users)s as u,
           -- which of the user's goals: cycles over the user's successive events
           (n / %(users)s) %% %(goals)s as k,
           %(t_end)s::timestamptz
             - make_interval(secs => %(span)s::float8 * (%(total)s - n) / %(total)s) as ts,
           random() as r, random() as r2, random() as r3
    from generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) as n
) as g
"""


@dataclass(frozen=True)
class DataSet:
    """The shape of the generated data: how many users, how many events, over which time."""

    users: int
    events: int
    t_end: str
    """ISO timestamp of the last event; the first is SPAN_DAYS earlier."""


def create_users(conn: psycopg.Connection[Any], users: int) -> float:
    """Insert generated users 1..users into auth.users; seconds taken."""
    started = time.perf_counter()
    conn.execute(GENERATE_USERS, {"prefix": USER_PREFIX, "lo": 1, "hi": users})
    return time.perf_counter() - started


def generate_events(conn: psycopg.Connection[Any], data: DataSet, lo: int, hi: int) -> float:
    """Insert events n in [lo, hi) of `data` in one statement; seconds taken."""
    started = time.perf_counter()
    conn.execute(
        GENERATE_EVENTS,
        {
            "user_prefix": USER_PREFIX,
            "goal_prefix": GOAL_PREFIX,
            "goals": GOALS_PER_USER,
            "users": data.users,
            "t_end": data.t_end,
            "span": SPAN_DAYS * 86400,
            "total": data.events,
            "lo": lo,
            "hi": hi,
        },
    )
    return time.perf_counter() - started


def secondary_indexes(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """(name, definition) of every index of the table that backs no constraint."""
    rows = conn.execute(
        """
        select i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid)
        from pg_index i
        where i.indrelid = 'public.engagement_events'::regclass
          and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)
        order by 1
        """
    ).fetchall()
    return [(str(name), str(definition)) for name, definition in rows]


def bulk_load(
    cluster: localcluster.Cluster, dbname: str, data: DataSet, *, chunk: int = 1_000_000
) -> dict[str, Any]:
    """Fill the table with `data` quickly: secondary indexes are dropped and rebuilt afterwards
    (foreign-key checks, constraints and triggers all run, as for any insert).

    Returns the seconds each step took, so a reader can see what a bulk backfill costs.
    """
    timings: dict[str, Any] = {}
    with cluster.connect(localcluster.SUPERUSER, dbname) as conn:
        timings["users_s"] = round(create_users(conn, data.users), 2)
        indexes = secondary_indexes(conn)
        for name, _ in indexes:
            conn.execute(sql.SQL("drop index {}").format(sql.Identifier(*name.split("."))))
        generated = 0.0
        for lo in range(0, data.events, chunk):
            hi = min(lo + chunk, data.events)
            generated += generate_events(conn, data, lo, hi)
            print(f"  generated {hi:,} of {data.events:,} events ({generated:.0f} s)", flush=True)
        timings["generate_s"] = round(generated, 1)
        timings["generate_events_per_s"] = round(data.events / generated)
        conn.execute("set maintenance_work_mem = '1GB'")
        builds: dict[str, float] = {}
        for name, definition in indexes:
            started = time.perf_counter()
            conn.execute(definition)
            builds[name] = round(time.perf_counter() - started, 1)
            print(f"  built {name} in {builds[name]} s", flush=True)
        timings["index_build_s"] = builds
        started = time.perf_counter()
        conn.execute("vacuum (analyze) public.engagement_events")
        timings["vacuum_analyze_s"] = round(time.perf_counter() - started, 1)
    return timings


def table_sizes(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """Rows, heap and index sizes of the table, in MiB."""
    row = conn.execute(
        """
        select (select count(*) from public.engagement_events),
               pg_relation_size('public.engagement_events'),
               pg_indexes_size('public.engagement_events'),
               pg_total_relation_size('public.engagement_events')
        """
    ).fetchone()
    assert row is not None
    indexes = conn.execute(
        """
        select indexrelid::regclass::text, pg_relation_size(indexrelid)
        from pg_index where indrelid = 'public.engagement_events'::regclass order by 1
        """
    ).fetchall()
    mib = 1024 * 1024
    return {
        "rows": int(row[0]),
        "heap_mib": round(int(row[1]) / mib, 1),
        "indexes_mib": round(int(row[2]) / mib, 1),
        "total_mib": round(int(row[3]) / mib, 1),
        "index_mib": {str(name): round(int(size) / mib, 1) for name, size in indexes},
    }


# --- the queries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One read shape: its SQL, who runs it, how its parameters are drawn, and its bar."""

    name: str
    title: str
    role: str
    """`authenticated` (through RLS, as the app) or `service_role` (a backend job)."""
    text: str
    params: Callable[[random.Random, int], tuple[str | None, dict[str, Any]]]
    """(user id the request runs as, query parameters) for a random draw over `users` users."""
    intended_index: str
    bar_ms: float | None = None


def _as_random_user(rng: random.Random, users: int) -> tuple[str | None, dict[str, Any]]:
    return user_uuid(rng.randint(1, users)), {}


def _goal_of_random_user(rng: random.Random, users: int) -> tuple[str | None, dict[str, Any]]:
    user = rng.randint(1, users)
    return user_uuid(user), {"filter": json.dumps({"goal_id": goal_uuid(user, rng.randrange(5))})}


def _event_type(rng: random.Random, users: int) -> tuple[str | None, dict[str, Any]]:
    return None, {"event_type": rng.choice(["goal_complete", "app_open", "steps_import"])}


BASELINE = Query(
    "baseline",
    "baseline: `select 1` in the same request transaction (round trip and machine noise)",
    "authenticated",
    "select 1",
    _as_random_user,
    "Result",
)
"""Measured beside the queries: what any statement costs on this machine at this moment."""

QUERIES: tuple[Query, ...] = (
    Query(
        "timeline",
        "user timeline: the caller's latest 50 non-deleted events (RLS supplies the user)",
        "authenticated",
        'select id, user_id, "timestamp", event_type, value from public.engagement_events'
        ' where not is_deleted order by "timestamp" desc limit 50',
        _as_random_user,
        "idx_engagement_events_user_timestamp",
        bar_ms=5.0,
    ),
    Query(
        "containment",
        "JSONB containment: every event of one goal, across users (backend job)",
        "service_role",
        'select id, user_id, "timestamp", event_type, value from public.engagement_events'
        ' where value @> %(filter)s::jsonb order by "timestamp" desc',
        _goal_of_random_user,
        "idx_engagement_events_value",
    ),
    Query(
        "containment_own",
        "JSONB containment through RLS: the caller's events of one goal",
        "authenticated",
        'select id, "timestamp", event_type, value from public.engagement_events'
        ' where value @> %(filter)s::jsonb order by "timestamp" desc',
        _goal_of_random_user,
        # Under RLS only leakproof operators may run before the policy's check, and jsonb @>
        # is not leakproof: the GIN index cannot serve this query, the user's rows are read
        # through the timeline index and filtered.
        "idx_engagement_events_user_timestamp",
    ),
    Query(
        "event_type",
        "event_type filter: the last 24 hours' events of one type, newest 100 (backend job)",
        "service_role",
        'select id, user_id, "timestamp", value from public.engagement_events'
        " where event_type = %(event_type)s and \"timestamp\" >= now() - interval '1 day'"
        ' order by "timestamp" desc limit 100',
        _event_type,
        "idx_engagement_events_event_type",
    ),
    Query(
        "daily_aggregate",
        "per-user daily aggregate: the caller's events per day and type, last 30 days",
        "authenticated",
        "select date_trunc('day', \"timestamp\") as day, event_type, count(*) as events,"
        " sum((value ->> 'steps')::integer) as steps"
        " from public.engagement_events"
        " where not is_deleted and \"timestamp\" >= now() - interval '30 days'"
        " group by 1, 2 order by 1 desc, 2",
        _as_random_user,
        "idx_engagement_events_user_timestamp",
    ),
)


def explain(conn: psycopg.Connection[Any], query: Query, rng: random.Random, users: int) -> str:
    """`EXPLAIN (ANALYZE, BUFFERS)` of one run of `query`, as its role, as text."""
    sub, params = query.params(rng, users)
    with request_as(conn, query.role, sub):
        rows = conn.execute(
            "explain (analyze, buffers) " + query.text,
            params,
        ).fetchall()
    return "\n".join(str(row[0]) for row in rows)


def _draws(
    query: Query, rng: random.Random, users: int, runs: int, budget_s: float
) -> Iterator[tuple[str | None, dict[str, Any]]]:
    """`runs` random draws of the query's parameters (the user and the query's values), or as
    many as fit in `budget_s` seconds: a slow query gets fewer runs, never fewer than 20."""
    stop_at = time.monotonic() + budget_s
    for done in range(runs):
        if done >= 20 and time.monotonic() > stop_at:
            return
        yield query.params(rng, users)


def measure(
    conn: psycopg.Connection[Any],
    query: Query,
    rng: random.Random,
    users: int,
    runs: int,
    budget_s: float = 60.0,
) -> dict[str, Any]:
    """Run `query` `runs` times (or for `budget_s` seconds) for random draws: latency of the
    query's round trip, client side, inside a request transaction that sets the role and the
    claims as PostgREST does."""
    latencies: list[float] = []
    rows = 0
    for sub, params in _draws(query, rng, users, runs, budget_s):
        with request_as(conn, query.role, sub):
            started = time.perf_counter()
            result = conn.execute(query.text, params).fetchall()
            latencies.append((time.perf_counter() - started) * 1000)
        rows += len(result)
    return {
        "runs": len(latencies),
        "mean_rows": round(rows / len(latencies), 1),
        "p50_ms": round(common.percentile(latencies, 50), 3),
        "p95_ms": round(common.percentile(latencies, 95), 3),
        "p99_ms": round(common.percentile(latencies, 99), 3),
        "max_ms": round(max(latencies), 3),
    }


def measure_server(
    conn: psycopg.Connection[Any],
    query: Query,
    rng: random.Random,
    users: int,
    runs: int,
    budget_s: float = 60.0,
) -> dict[str, Any]:
    """Server-side time of `runs` draws (planning + execution, from EXPLAIN ANALYZE without
    per-node timing): what the database spends, apart from the round trip and the client."""
    times: list[float] = []
    for sub, params in _draws(query, rng, users, runs, budget_s):
        with request_as(conn, query.role, sub):
            row = conn.execute(
                "explain (analyze, timing off, summary, format json) " + query.text, params
            ).fetchone()
        assert row is not None
        plan = row[0][0] if isinstance(row[0], list) else json.loads(str(row[0]))[0]
        times.append(float(plan["Planning Time"]) + float(plan["Execution Time"]))
    return {
        "server_runs": len(times),
        "server_p50_ms": round(common.percentile(times, 50), 3),
        "server_p99_ms": round(common.percentile(times, 99), 3),
    }


def measure_all(conn: psycopg.Connection[Any], users: int, runs: int, seed: int) -> dict[str, Any]:
    """EXPLAIN and latency of every query; warms each query first (plans cached, pages read)."""
    results: dict[str, Any] = {}
    for query in (BASELINE, *QUERIES):
        rng = random.Random(seed)
        measure(conn, query, rng, users, max(5, runs // 10), budget_s=10.0)
        figures = measure(conn, query, rng, users, runs)
        figures.update(measure_server(conn, query, random.Random(seed + 1), users, runs))
        plan = explain(conn, query, rng, users)
        figures["uses_intended_index"] = query.intended_index in plan
        figures["bar_ms"] = query.bar_ms
        figures["plan"] = plan
        results[query.name] = figures
        common.print_figures(
            f"{query.name}: {query.title}",
            [
                ("runs", figures["runs"]),
                ("rows per run (mean)", figures["mean_rows"]),
                ("p50 ms", figures["p50_ms"]),
                ("p95 ms", figures["p95_ms"]),
                ("p99 ms", figures["p99_ms"]),
                ("server p50 ms", figures["server_p50_ms"]),
                ("server p99 ms", figures["server_p99_ms"]),
                (f"uses {query.intended_index}", figures["uses_intended_index"]),
            ],
        )
    return results


def own_migrations() -> list[Path]:
    return sorted(localcluster.MIGRATIONS.glob(f"{OWN_MIGRATIONS}*.sql"))


# --- the benchmark ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events", type=int, default=None, help=f"events to generate (default {DEFAULT_EVENTS:,})"
    )
    parser.add_argument(
        "--full", action="store_true", help=f"the full size: {FULL_EVENTS:,} events"
    )
    parser.add_argument(
        "--users", type=int, default=None, help=f"users (default {DEFAULT_USERS:,})"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="runs per query (default 2000; --quick 50)"
    )
    parser.add_argument("--seed", type=int, default=20241220, help="random seed of the draws")


def sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """(events, users, runs) for these arguments."""
    events = args.events or (
        QUICK_EVENTS if args.quick else FULL_EVENTS if args.full else DEFAULT_EVENTS
    )
    users = args.users or (QUICK_USERS if args.quick else DEFAULT_USERS)
    runs = args.runs or (50 if args.quick else 2000)
    return events, users, runs


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    events, users, runs = sizes(args)
    later = own_migrations()
    before = [p for p in sorted(localcluster.MIGRATIONS.glob("*.sql")) if p not in later]
    # fsync is off while generating (a throwaway data set); reads do not depend on it.
    cluster = localcluster.start(durable=False, extra_settings=("max_wal_size=4GB",))
    figures: dict[str, Any] = {"events": events, "users": users, "runs_per_query": runs}
    try:
        cluster.prepare_database(common.BENCH_DB, migrations=before)
        with cluster.connect("postgres", common.BENCH_DB) as conn:
            t_end = conn.execute(
                "select to_char(now() - interval '1 minute', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            ).fetchone()
        assert t_end is not None
        data = DataSet(users=users, events=events, t_end=str(t_end[0]))
        print(f"generating {events:,} events over {users:,} users", flush=True)
        figures["load"] = bulk_load(cluster, common.BENCH_DB, data)
        with cluster.connect("postgres", common.BENCH_DB) as conn:
            figures["table"] = table_sizes(conn)
        with cluster.connect("authenticator", common.BENCH_DB) as api:
            print("== before supabase/migrations/" + OWN_MIGRATIONS + "*", flush=True)
            figures["before"] = measure_all(api, users, runs, args.seed)
        if later:
            applied: dict[str, float] = {}
            for path in later:
                started = time.perf_counter()
                cluster.run_sql_file(path, dbname=common.BENCH_DB)
                applied[path.name] = round(time.perf_counter() - started, 1)
                print(f"applied {path.name} in {applied[path.name]} s", flush=True)
            with cluster.connect("postgres", common.BENCH_DB) as conn:
                conn.execute("analyze public.engagement_events")
                figures["table_after"] = table_sizes(conn)
            figures["migrations_applied_s"] = applied
            with cluster.connect("authenticator", common.BENCH_DB) as api:
                print("== after", flush=True)
                figures["after"] = measure_all(api, users, runs, args.seed)
    finally:
        cluster.stop()
    common.write_results("queries", figures, args, machine)
    return figures


if __name__ == "__main__":  # the same as python -m bench queries
    from bench.__main__ import main

    sys.exit(main(["queries", *sys.argv[1:]]))
