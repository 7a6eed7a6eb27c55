"""Concurrency: many writers through RLS at once, plus readers, then an isolation check.

Each writer has its own connection, logs in as `authenticator` and, like PostgREST, runs every
request as one transaction with `SET LOCAL ROLE authenticated` and the user's JWT claims; each
writer is a different user and inserts only its own events, one per request, as fast as it
can for a fixed time. Readers, on their own connections, read random users' timelines the same
way and check that every row they get back belongs to the user they act as. Afterwards every
user's visible rows are compared with exactly the rows that user inserted.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from bench import common
from localdb.api_roles import request_as

INSERT = (
    'insert into public.engagement_events (id, user_id, "timestamp", event_type, value)'
    " values (%s, %s, now(), %s, %s)"
)
TIMELINE = (
    'select id, user_id from public.engagement_events where not is_deleted order by "timestamp"'
    " desc limit 50"
)
PAYLOADS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("app_open", {"platform": "ios", "app_version": "2.4.1", "source": "launcher"}),
    ("steps_import", {"steps": 8421, "source": "apple_health", "device": "Apple Watch"}),
    ("goal_complete", {"goal_type": "steps", "target": 8000, "achieved": 8421, "unit": "steps"}),
)


@dataclass
class Tally:
    """What one kind of operation did: latencies (ms) and errors, merged across threads."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    first_errors: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        done = len(self.latencies_ms)
        figures: dict[str, Any] = {
            "operations": done,
            "per_second": round(done / seconds, 1),
            "errors": self.errors,
            "first_errors": self.first_errors,
        }
        if done:
            for pct in (50, 95, 99):
                figures[f"p{pct}_ms"] = round(common.percentile(self.latencies_ms, pct), 2)
            figures["max_ms"] = round(max(self.latencies_ms), 2)
        return figures


@dataclass
class Run:
    """Shared state of one run."""

    writes: Tally = field(default_factory=Tally)
    reads: Tally = field(default_factory=Tally)
    read_leaks: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    inserted: dict[str, set[str]] = field(default_factory=dict)

    def error(self, tally: Tally, exc: BaseException) -> None:
        with self.lock:
            tally.errors += 1
            if len(tally.first_errors) < 5:
                tally.first_errors.append(f"{type(exc).__name__}: {exc}")


def _writer(
    db: common.BenchDatabase, me: str, run: Run, ready: threading.Barrier, stop_at: list[float]
) -> None:
    """Insert my own events, one request each, until the deadline."""
    latencies: list[float] = []
    mine: set[str] = set()
    rng = random.Random(me)
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        ready.wait()
        while time.monotonic() < stop_at[0]:
            event_type, value = rng.choice(PAYLOADS)
            event_id = str(uuid.uuid4())
            started = time.perf_counter()
            try:
                with request_as(conn, "authenticated", me):
                    conn.execute(INSERT, (event_id, me, event_type, json.dumps(value)))
            except psycopg.Error as exc:
                run.error(run.writes, exc)
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            mine.add(event_id)
    with run.lock:
        run.writes.latencies_ms.extend(latencies)
        run.inserted[me] = mine


def _reader(
    db: common.BenchDatabase,
    users: list[str],
    seed: int,
    run: Run,
    ready: threading.Barrier,
    stop_at: list[float],
) -> None:
    """Read random users' timelines as those users; every row must be theirs."""
    latencies: list[float] = []
    leaks = 0
    rng = random.Random(seed)
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        ready.wait()
        while time.monotonic() < stop_at[0]:
            me = rng.choice(users)
            started = time.perf_counter()
            try:
                with request_as(conn, "authenticated", me):
                    rows = conn.execute(TIMELINE).fetchall()
            except psycopg.Error as exc:
                run.error(run.reads, exc)
                continue
            latencies.append((time.perf_counter() - started) * 1000)
            leaks += sum(1 for _, owner in rows if str(owner) != me)
    with run.lock:
        run.reads.latencies_ms.extend(latencies)
        run.read_leaks += leaks


def verify(db: common.BenchDatabase, run: Run) -> dict[str, Any]:
    """Every user sees exactly the rows it inserted; anon sees nothing; the table holds the sum."""
    mismatched_users = 0
    foreign_rows = 0
    missing_rows = 0
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        for me, mine in run.inserted.items():
            with request_as(conn, "authenticated", me):
                rows = conn.execute("select id, user_id from public.engagement_events").fetchall()
            seen = {str(row_id) for row_id, _ in rows}
            foreign_rows += sum(1 for _, owner in rows if str(owner) != me)
            missing_rows += len(mine - seen)
            if seen != mine:
                mismatched_users += 1
        try:
            with request_as(conn, "anon"):
                anon_rows = len(conn.execute("select id from public.engagement_events").fetchall())
        except psycopg.errors.InsufficientPrivilege:
            anon_rows = 0
    with db.connect() as owner:
        row = owner.execute(
            "select count(*) from public.engagement_events where user_id = any(%s)",
            ([uuid.UUID(u) for u in run.inserted],),
        ).fetchone()
    stored = int(row[0]) if row else 0
    return {
        "users_checked": len(run.inserted),
        "rows_stored": stored,
        "rows_acknowledged": sum(len(m) for m in run.inserted.values()),
        "users_seeing_other_than_exactly_their_rows": mismatched_users,
        "foreign_rows_seen": foreign_rows,
        "own_rows_missing": missing_rows,
        "rows_seen_by_anon": anon_rows,
    }


def _threads(target: Callable[..., None], argsets: list[tuple[Any, ...]]) -> list[threading.Thread]:
    return [threading.Thread(target=target, args=each, daemon=True) for each in argsets]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--writers", type=int, default=200, help="writer users (default 200)")
    parser.add_argument("--readers", type=int, default=20, help="reader sessions (default 20)")
    parser.add_argument(
        "--seconds", type=float, default=None, help="duration (default 20; --quick 3)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    seconds = args.seconds or (3.0 if args.quick else 20.0)
    writers, readers = args.writers, args.readers
    sessions = writers + readers
    # Every session is a server connection; leave room for maintenance connections.
    with common.bench_database(durable=True, max_connections=max(300, sessions + 20)) as db:
        users = [str(u) for u in common.create_users(db, writers)]
        run_state = Run()
        ready = threading.Barrier(sessions + 1)
        stop_at = [float("inf")]
        threads = _threads(_writer, [(db, me, run_state, ready, stop_at) for me in users])
        threads += _threads(
            _reader, [(db, users, n, run_state, ready, stop_at) for n in range(readers)]
        )
        for thread in threads:
            thread.start()
        ready.wait()
        started, cpu_started = time.monotonic(), time.process_time()
        stop_at[0] = started + seconds
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        client_cpu = time.process_time() - cpu_started
        checks = verify(db, run_state)
    figures: dict[str, Any] = {
        "writers": writers,
        "readers": readers,
        "seconds": round(elapsed, 2),
        # The client shares the machine with the server: this is how many cores it took.
        "client_cpu_cores": round(client_cpu / elapsed, 2),
        "writes": run_state.writes.summary(elapsed),
        "reads": run_state.reads.summary(elapsed),
        "leaks_seen_by_readers": run_state.read_leaks,
        "isolation": checks,
    }
    errors = run_state.writes.errors + run_state.reads.errors
    leaks = (
        run_state.read_leaks
        + checks["users_seeing_other_than_exactly_their_rows"]
        + checks["rows_seen_by_anon"]
    )
    figures["errors"] = errors
    figures["leaks"] = leaks
    for name, tally in (("writes", figures["writes"]), ("reads", figures["reads"])):
        common.print_figures(
            f"{name} ({writers if name == 'writes' else readers} sessions, {elapsed:.1f} s)",
            [
                ("requests", tally["operations"]),
                ("requests/s", tally["per_second"]),
                ("p50 ms", tally.get("p50_ms", "-")),
                ("p95 ms", tally.get("p95_ms", "-")),
                ("p99 ms", tally.get("p99_ms", "-")),
                ("errors", tally["errors"]),
            ],
        )
    common.print_figures(
        "isolation afterwards",
        [*checks.items(), ("leaks", leaks), ("client CPU, cores", figures["client_cpu_cores"])],
    )
    common.write_results("concurrency", figures, args, machine)
    return figures


if __name__ == "__main__":  # the same as python -m bench concurrency
    from bench.__main__ import main

    sys.exit(main(["concurrency", *sys.argv[1:]]))
