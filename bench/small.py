"""Small requests (webhook traffic): batch_import against a direct insert of the same rows.

Wearables integrations post one user's update at a time, so most requests carry 1-10 events.
For each request size (``--sizes``, default 1, 10 and 100 events), ``--clients`` threads (default
4, the per-instance concurrency deploy.sh sets) each post their own requests over one keep-alive
connection, every request one user's new events, all valid, all stored:

- batch_import, served by functions-framework (gunicorn, as on Cloud Functions, with the
  ``THREADS`` and ``WORKERS`` deploy.sh sets unless ``--threads``/``--workers`` say otherwise)
  with the direct sink, the rate limit on (with limits this run cannot reach, so its cost is
  counted; every client is the same caller, as one integration's webhooks are, unless
  ``--own-callers`` gives each client a JWT ``sub`` of its own);
- the baseline: what PostgREST runs for a POST with ``Prefer: resolution=ignore-duplicates``, one
  statement ``insert ... select ... from json_to_recordset($1) ... on conflict (id) do nothing``
  in its own transaction, the same rows, one connection per client.

The two alternate, ``--rounds`` times per size, each on its own database cloned from one
template. Before the timed part each client sends ``--warmup`` requests of its own (not timed),
so that neither side's figures include opening connections, the server's lazy imports or a
backend's first catalog reads. events/s is the timed events divided by the wall time of the
timed part; latency is per request, as the client sees it. Medians of the rounds are printed
with their ratio. The CPU each side costs a request is counted over its timed part: the whole
machine's busy time (``/proc/stat``, every process: clients, function, PostgreSQL), the function's
processes (gunicorn's arbiter and worker, ``/proc/<pid>/stat``) and the benchmark's own client
threads. Every event is checked in the database afterwards. ``--statements`` also loads
pg_stat_statements and prints, per side, the statements of one request and the server's
execution time (that instrumentation costs time itself, so take rates from a run without it).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from bench import common
from localdb import cluster as localcluster
from localdb import functions_local

DIRECT_INSERT = """
insert into public.engagement_events (id, user_id, "timestamp", event_type, value)
select id, user_id, "timestamp", event_type, value
from json_to_recordset(%s::json)
    as incoming(id uuid, user_id uuid, "timestamp" timestamptz, event_type text, value jsonb)
on conflict (id) do nothing
"""

DEPLOYED_THREADS = 4
"""THREADS deploy.sh gives batch_import (one gunicorn thread per concurrent request)."""
DEPLOYED_WORKERS = 1
"""WORKERS deploy.sh gives batch_import."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 10, 100], help="events per request"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument(
        "--events",
        type=int,
        default=4_000,
        help="timed events per round and size, at least one request per client (default 4000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    parser.add_argument("--users", type=int, default=500, help="users the requests belong to")
    parser.add_argument(
        "--warmup", type=int, default=5, help="untimed requests per client first (default 5)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=DEPLOYED_THREADS,
        help=f"gunicorn threads of the function (THREADS; default {DEPLOYED_THREADS})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=DEPLOYED_WORKERS,
        help=f"gunicorn worker processes (WORKERS; default {DEPLOYED_WORKERS})",
    )
    parser.add_argument(
        "--own-callers",
        action="store_true",
        help="each client its own caller of the rate limit (default: all one caller, as one "
        "integration's webhooks are)",
    )
    parser.add_argument(
        "--statements",
        action="store_true",
        help="count each side's statements and server time with pg_stat_statements",
    )


def request_events(
    users: Sequence[uuid.UUID], size: int, requests: int, seed: int
) -> list[list[dict[str, Any]]]:
    """``requests`` requests of ``size`` new events each, every request one user's."""
    batches = []
    for n in range(requests):
        user = users[(seed + n) % len(users)]
        batches.append(common.make_events(size, [user], seed=seed * 1_000_003 + n, local_share=0.0))
    return batches


def as_rows(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows PostgREST would be sent for ``events``: an id for each, the rest as is."""
    return [
        {
            "id": event.get("event_id") or str(uuid.uuid4()),
            "user_id": event["user_id"],
            "timestamp": event["timestamp"],
            "event_type": event["event_type"],
            "value": event["value"],
        }
        for event in events
    ]


@dataclass
class Cpu:
    """CPU seconds spent during a timed part (None where /proc does not tell)."""

    machine: float | None
    """Every process of the machine, from /proc/stat."""
    client: float
    """The benchmark's own process: the client threads."""
    function: float | None = None
    """The function's processes (gunicorn's arbiter and its worker)."""


def _machine_busy_seconds() -> float | None:
    """CPU seconds the machine has been busy (all cores, all processes) since boot."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    ticks = [int(field) for field in fields]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def _process_tree_seconds(pid: int) -> float | None:
    """CPU seconds of ``pid`` and its children (user and system), from /proc."""
    total = 0.0
    found = False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else None


@dataclass
class SideRun:
    """One side's timed part of one round."""

    seconds: float
    latencies_ms: list[float]
    events: int
    errors: list[str]
    cpu: Cpu | None = None
    rows_stored: int = 0
    """Rows the side added to the table, counted in the database."""
    requests: int = 0
    statements: list[tuple[str, int, float]] = field(default_factory=list)
    """(statement, calls, total execution ms) on the server, with ``--statements``."""


def _in_parallel(
    work: list[list[Any]],
    send: Callable[[int, Any], int],
    clients: int,
    function_pid: int | None = None,
) -> SideRun:
    """Run ``send(client, item)`` over each client's items at once, timed, with the CPU it
    cost (``function_pid``: the function's process, whose tree is counted too)."""
    latencies: list[float] = []
    stored = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        mine: list[float] = []
        count = 0
        for item in work[number]:
            started = time.perf_counter()
            try:
                count += send(number, item)
            except Exception as exc:  # noqa: BLE001 - a benchmark reports, it does not stop
                with lock:
                    if len(errors) < 5:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                continue
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)
            stored[0] += count

    def function_seconds() -> float | None:
        return None if function_pid is None else _process_tree_seconds(function_pid)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    machine, own, function = _machine_busy_seconds(), time.process_time(), function_seconds()
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    machine_after, function_after = _machine_busy_seconds(), function_seconds()
    cpu = Cpu(
        machine=None if machine is None or machine_after is None else machine_after - machine,
        client=time.process_time() - own,
        function=None if function is None or function_after is None else function_after - function,
    )
    return SideRun(seconds, latencies, stored[0], errors, cpu)


def run_function(
    server: functions_local.FunctionServer,
    warmup: list[list[bytes]],
    work: list[list[bytes]],
    clients: int,
    *,
    own_callers: bool = False,
) -> SideRun:
    secret = server.jwt_secret
    if own_callers:
        now = int(time.time())
        tokens = [
            jwt.encode(
                {"role": "service_role", "sub": f"bench-client-{n}", "iat": now, "exp": now + 3600},
                secret,
                algorithm="HS256",
            )
            for n in range(clients)
        ]
    else:
        tokens = [functions_local.mint_service_token(secret)] * clients
    headers = [
        {"Content-Type": "application/json", "Authorization": f"Bearer {token}"} for token in tokens
    ]
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(clients)
    ]

    def send(client: int, body: bytes) -> int:
        conn = connections[client]
        conn.request("POST", "/", body=body, headers=headers[client])
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"batch_import answered {response.status}: {answer}")
        return int(answer["inserted"])

    try:
        warm = _in_parallel(warmup, send, clients)
        timed = _in_parallel(work, send, clients, function_pid=server.process.pid)
        timed.errors = warm.errors + timed.errors
        return timed
    finally:
        for conn in connections:
            conn.close()


def run_direct(
    db: common.BenchDatabase, warmup: list[list[str]], work: list[list[str]], clients: int
) -> SideRun:
    connections = [db.connect() for _ in range(clients)]
    for conn in connections:
        conn.prepare_threshold = None  # as through Supavisor's transaction pooler

    def send(client: int, rows_json: str) -> int:
        cursor = connections[client].execute(DIRECT_INSERT, (rows_json,))
        return max(cursor.rowcount, 0)

    try:
        warm = _in_parallel(warmup, send, clients)
        timed = _in_parallel(work, send, clients)
        timed.errors = warm.errors + timed.errors
        return timed
    finally:
        for conn in connections:
            conn.close()


def _function_side(
    own_callers: bool,
    extra_env: dict[str, str],
    warmup: list[list[bytes]],
    work: list[list[bytes]],
    clients: int,
    db: common.BenchDatabase,
) -> SideRun:
    server = common.serve_function("batch_import", db.url, extra_env=extra_env)
    try:
        return run_function(server, warmup, work, clients, own_callers=own_callers)
    finally:
        server.stop()


def _direct_side(
    warmup: list[list[str]], work: list[list[str]], clients: int, db: common.BenchDatabase
) -> SideRun:
    return run_direct(db, warmup, work, clients)


def _rows(db: common.BenchDatabase) -> int:
    with db.connect() as conn:
        row = conn.execute("select count(*) from public.engagement_events").fetchone()
    return int(row[0]) if row else 0


def _statements(cluster: localcluster.Cluster, dbname: str) -> list[tuple[str, int, float]]:
    """The statements pg_stat_statements saw in ``dbname``: (text, calls, total ms), grouped
    by their first 70 characters (a temporary table gets a new query id each time)."""
    with cluster.admin() as admin:
        rows = admin.execute(
            "select regexp_replace(query, '\\s+', ' ', 'g'), calls, total_exec_time"
            " from pg_stat_statements join pg_database d on d.oid = dbid where d.datname = %s",
            (dbname,),
        ).fetchall()
    grouped: dict[str, list[float]] = {}
    for query, calls, total in rows:
        entry = grouped.setdefault(str(query)[:70], [0, 0.0])
        entry[0] += int(calls)  # type: ignore[call-overload]
        entry[1] += float(total)  # type: ignore[arg-type]
    return sorted(
        ((query, int(calls), total) for query, (calls, total) in grouped.items()),
        key=lambda item: -item[2],
    )


def _summary(results: list[SideRun], expected_rows: int) -> dict[str, Any]:
    rates = [run.events / run.seconds for run in results]
    latencies = [ms for run in results for ms in run.latencies_ms]
    errors = [error for run in results for error in run.errors]
    requests = sum(run.requests for run in results)

    def cpu_ms(part: str) -> float | None:
        """Median over the rounds of ``part``'s CPU milliseconds per timed request."""
        per_request = [
            getattr(run.cpu, part) * 1000 / len(run.latencies_ms)
            for run in results
            if run.cpu is not None and getattr(run.cpu, part) is not None and run.latencies_ms
        ]
        return round(common.median(per_request), 3) if per_request else None

    summary: dict[str, Any] = {
        "cpu_ms_per_request": {part: cpu_ms(part) for part in ("machine", "function", "client")},
        "events_per_s": round(common.median(rates), 1),
        "events_per_s_rounds": [round(rate, 1) for rate in rates],
        "p50_ms": round(common.percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(common.percentile(latencies, 99), 2) if latencies else None,
        "stored_every_event": all(run.rows_stored == expected_rows for run in results),
        "first_errors": errors[:5],
    }
    if any(run.statements for run in results):
        totals: dict[str, list[float]] = {}
        for run in results:
            for query, calls, ms in run.statements:
                entry = totals.setdefault(query, [0, 0.0])
                entry[0] += calls
                entry[1] += ms
        summary["statements_per_request"] = round(
            sum(calls for calls, _ in totals.values()) / requests, 1
        )
        summary["server_exec_ms_per_request"] = round(
            sum(ms for _, ms in totals.values()) / requests, 3
        )
        summary["statements"] = [
            {
                "statement": query,
                "per_request": round(calls / requests, 2),
                "ms": round(ms / requests, 3),
            }
            for query, (calls, ms) in sorted(totals.items(), key=lambda item: -item[1][1])
        ]
    return summary


def _cpu_text(cpu: dict[str, float | None]) -> str:
    """'machine 3.3 (function 1.6, client 0.3)', leaving out what was not counted."""
    parts = [f"{name} {ms:.2f}" for name, ms in cpu.items() if ms is not None]
    if not parts:
        return "not counted (no /proc)"
    return parts[0] + (f" ({', '.join(parts[1:])})" if parts[1:] else "")


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    if args.quick:
        sizes, events, rounds, users_count, warmup = [1, 10], 80, 1, 20, 1
    else:
        sizes, events, rounds, users_count = args.sizes, args.events, args.rounds, args.users
        warmup = args.warmup
    clients = args.clients
    extra_env = {
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "100000000",
        "RATE_LIMIT_EVENTS_PER_MINUTE": "1000000000",
        "THREADS": str(args.threads),
        "WORKERS": str(args.workers),
    }
    settings = ["shared_preload_libraries=pg_stat_statements"] if args.statements else []
    per_size: dict[str, Any] = {}
    with common.bench_database(durable=not args.quick, extra_settings=settings) as template:
        users = common.create_users(template, users_count)
        cluster = template.cluster
        if args.statements:
            with cluster.admin() as admin:
                admin.execute("create extension if not exists pg_stat_statements")
        for size in sizes:
            requests_per_client = max(1, events // (size * clients))
            expected = (requests_per_client + warmup) * clients * size
            function_results: list[SideRun] = []
            direct_results: list[SideRun] = []
            for round_number in range(rounds):
                seed = size * 1000 + round_number * 10
                work = [
                    request_events(users, size, requests_per_client, seed + client)
                    for client in range(clients)
                ]
                warm = [
                    request_events(users, size, warmup, 7_000_000 + seed + client)
                    for client in range(clients)
                ]
                bodies = [[json.dumps(batch).encode() for batch in mine] for mine in work]
                warm_bodies = [[json.dumps(batch).encode() for batch in mine] for mine in warm]
                rows = [[json.dumps(as_rows(batch)) for batch in mine] for mine in work]
                warm_rows = [[json.dumps(as_rows(batch)) for batch in mine] for mine in warm]

                sides: list[tuple[str, Callable[[common.BenchDatabase], SideRun], list[SideRun]]]
                sides = [
                    (
                        "fn",
                        functools.partial(
                            _function_side,
                            args.own_callers,
                            extra_env,
                            warm_bodies,
                            bodies,
                            clients,
                        ),
                        function_results,
                    ),
                    (
                        "direct",
                        functools.partial(_direct_side, warm_rows, rows, clients),
                        direct_results,
                    ),
                ]
                # Alternate which goes first, so neither always meets a warmer machine.
                if round_number % 2:
                    sides.reverse()
                for label, side, results in sides:
                    db = common.BenchDatabase(
                        cluster,
                        cluster.clone(template.name, f"small_{label}_{size}_{round_number}"),
                    )
                    try:
                        rows_before = _rows(db)  # the seed's
                        if args.statements:
                            with cluster.admin() as admin:
                                admin.execute("select pg_stat_statements_reset()")
                        result = side(db)
                        result.requests = (requests_per_client + warmup) * clients
                        if args.statements:
                            result.statements = _statements(cluster, db.name)
                        result.rows_stored = _rows(db) - rows_before
                        results.append(result)
                    finally:
                        cluster.drop(db.name)
            function = _summary(function_results, expected)
            direct = _summary(direct_results, expected)
            ratio = round(function["events_per_s"] / direct["events_per_s"], 3)
            per_size[str(size)] = {
                "requests_per_round": requests_per_client * clients,
                "batch_import": function,
                "direct_insert": direct,
                "ratio": ratio,
            }
            common.print_figures(
                f"{size} event(s) per request, {clients} clients, {rounds} round(s)",
                [
                    ("batch_import events/s", function["events_per_s"]),
                    ("direct insert events/s", direct["events_per_s"]),
                    ("ratio", f"{ratio:.2f}"),
                    ("batch_import p50 / p99 ms", f"{function['p50_ms']} / {function['p99_ms']}"),
                    ("direct p50 / p99 ms", f"{direct['p50_ms']} / {direct['p99_ms']}"),
                    (
                        "batch_import CPU ms/request",
                        _cpu_text(function["cpu_ms_per_request"]),
                    ),
                    ("direct CPU ms/request", _cpu_text(direct["cpu_ms_per_request"])),
                    (
                        "every event stored",
                        function["stored_every_event"] and direct["stored_every_event"],
                    ),
                ],
            )
            for name, side_summary in (("batch_import", function), ("direct", direct)):
                if "statements" in side_summary:
                    print(
                        f"  {name}: {side_summary['statements_per_request']} statements and "
                        f"{side_summary['server_exec_ms_per_request']} ms of server execution "
                        "per request:"
                    )
                    for entry in side_summary["statements"][:12]:
                        print(
                            f"    {entry['per_request']:5.2f} x {entry['ms']:7.3f} ms  "
                            f"{entry['statement']}"
                        )
            for error in function["first_errors"] + direct["first_errors"]:
                print(f"  error: {error}")
    figures = {
        "clients": clients,
        "rounds": rounds,
        "warmup_requests_per_client": warmup,
        "threads": args.threads,
        "workers": args.workers,
        "statements_counted": bool(args.statements),
        "own_callers": bool(args.own_callers),
        "sizes": per_size,
    }
    common.write_results("small", figures, args, machine)
    return figures
