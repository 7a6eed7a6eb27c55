"""Small requests (webhook traffic): batch_import against a direct insert of the same rows.

Wearables integrations post one user's update at a time, so most requests carry 1-10 events.
For each request size (``--sizes``, default 1, 10 and 100 events), ``--clients`` threads (default
4, the per-instance concurrency deploy.sh sets) each post their own requests over one keep-alive
connection, every request one user's new events, all valid, all stored:

- batch_import, served by functions-framework (gunicorn, as on Cloud Functions) with the direct
  sink, the rate limit on (with limits this run cannot reach, so its cost is counted);
- the baseline: what PostgREST runs for a POST with ``Prefer: resolution=ignore-duplicates``, one
  statement ``insert ... select ... from json_to_recordset($1) ... on conflict (id) do nothing``
  in its own transaction, the same rows, one connection per client.

The two alternate, ``--rounds`` times per size, each on its own database cloned from one
template; events/s is the events stored divided by the wall time of the round, latency is per
request. Medians of the rounds are printed with their ratio.
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from bench import common
from localdb import functions_local

DIRECT_INSERT = """
insert into public.engagement_events (id, user_id, "timestamp", event_type, value)
select id, user_id, "timestamp", event_type, value
from json_to_recordset(%s::json)
    as incoming(id uuid, user_id uuid, "timestamp" timestamptz, event_type text, value jsonb)
on conflict (id) do nothing
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[1, 10, 100], help="events per request"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument(
        "--events",
        type=int,
        default=4_000,
        help="events per round and size, at least one request per client (default 4000)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds per size (default 3)")
    parser.add_argument("--users", type=int, default=500, help="users the requests belong to")


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


def _in_parallel(
    work: list[list[Any]], send: Callable[[int, Any], int], clients: int
) -> tuple[float, list[float], int, list[str]]:
    """Run ``send(client, item)`` over each client's items at once; (seconds, latencies in ms,
    events stored, first errors)."""
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

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, stored[0], errors


def run_function(
    server: functions_local.FunctionServer, work: list[list[bytes]], clients: int
) -> tuple[float, list[float], int, list[str]]:
    token = functions_local.mint_service_token(server.jwt_secret)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    connections = [
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=60) for _ in range(clients)
    ]

    def send(client: int, body: bytes) -> int:
        conn = connections[client]
        conn.request("POST", "/", body=body, headers=headers)
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"batch_import answered {response.status}: {answer}")
        return int(answer["inserted"])

    try:
        return _in_parallel(work, send, clients)
    finally:
        for conn in connections:
            conn.close()


def run_direct(
    db: common.BenchDatabase, work: list[list[str]], clients: int
) -> tuple[float, list[float], int, list[str]]:
    connections = [db.connect() for _ in range(clients)]
    for conn in connections:
        conn.prepare_threshold = None  # as through Supavisor's transaction pooler

    def send(client: int, rows_json: str) -> int:
        cursor = connections[client].execute(DIRECT_INSERT, (rows_json,))
        return max(cursor.rowcount, 0)

    try:
        return _in_parallel(work, send, clients)
    finally:
        for conn in connections:
            conn.close()


def _summary(
    results: list[tuple[float, list[float], int, list[str]]], expected: int
) -> dict[str, Any]:
    rates = [stored / seconds for seconds, _, stored, _ in results]
    latencies = [ms for _, round_ms, _, _ in results for ms in round_ms]
    errors = [error for *_, round_errors in results for error in round_errors]
    return {
        "events_per_s": round(common.median(rates), 1),
        "events_per_s_rounds": [round(rate, 1) for rate in rates],
        "p50_ms": round(common.percentile(latencies, 50), 2) if latencies else None,
        "p99_ms": round(common.percentile(latencies, 99), 2) if latencies else None,
        "stored_every_event": all(stored == expected for _, _, stored, _ in results),
        "first_errors": errors[:5],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    if args.quick:
        sizes, events, rounds, users_count = [1, 10], 80, 1, 20
    else:
        sizes, events, rounds, users_count = args.sizes, args.events, args.rounds, args.users
    clients = args.clients
    extra_env = {
        "RATE_LIMIT_REQUESTS_PER_MINUTE": "100000000",
        "RATE_LIMIT_EVENTS_PER_MINUTE": "1000000000",
    }
    per_size: dict[str, Any] = {}
    with common.bench_database(durable=not args.quick) as template:
        users = common.create_users(template, users_count)
        cluster = template.cluster
        for size in sizes:
            requests_per_client = max(1, events // (size * clients))
            expected = requests_per_client * clients * size
            function_results = []
            direct_results = []
            for round_number in range(rounds):
                seed = size * 1000 + round_number * 10
                work = [
                    request_events(users, size, requests_per_client, seed + client)
                    for client in range(clients)
                ]
                fn_db = common.BenchDatabase(
                    cluster, cluster.clone(template.name, f"small_fn_{size}_{round_number}")
                )
                direct_db = common.BenchDatabase(
                    cluster, cluster.clone(template.name, f"small_direct_{size}_{round_number}")
                )
                bodies = [[json.dumps(batch).encode() for batch in mine] for mine in work]
                rows = [[json.dumps(as_rows(batch)) for batch in mine] for mine in work]
                server = common.serve_function("batch_import", fn_db.url, extra_env=extra_env)
                try:
                    # Alternate which goes first, so neither always meets a warmer machine.
                    if round_number % 2 == 0:
                        function_results.append(run_function(server, bodies, clients))
                        direct_results.append(run_direct(direct_db, rows, clients))
                    else:
                        direct_results.append(run_direct(direct_db, rows, clients))
                        function_results.append(run_function(server, bodies, clients))
                finally:
                    server.stop()
                    cluster.drop(fn_db.name)
                    cluster.drop(direct_db.name)
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
                    ("every event stored", function["stored_every_event"]),
                ],
            )
            for error in function["first_errors"] + direct["first_errors"]:
                print(f"  error: {error}")
    figures = {"clients": clients, "rounds": rounds, "sizes": per_size}
    common.write_results("small", figures, args, machine)
    return figures
