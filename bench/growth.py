"""Growth: ingest rate and timeline latency as the table grows from 100 thousand rows upward.

The table keeps every index, constraint, trigger and the foreign key of the migrations while it
grows, and the cluster runs with fsync and synchronous commit on. At each size it measures:

- COPY of client-built 10,000-event batches straight into the table (the cost a batch import
  pays for its rows, without the function around it), median of three batches;
- the server-side bulk rate of the INSERT ... SELECT that grew the table to that size (the
  generator of bench/queries.py: the fastest way in, all indexes maintained);
- the user timeline through RLS (bench/queries.py's query) for random users: p50/p99.

It writes a plot of both curves to docs/img/growth.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench import common, queries
from localdb import cluster as localcluster

BATCH = 10_000
CHECKPOINTS = (100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000)
QUICK_CHECKPOINTS = (10_000, 20_000, 50_000)
FILL_CHUNK = 500_000


def checkpoints(target: int, quick: bool) -> list[int]:
    """The table sizes to measure at, up to and including `target`."""
    base = QUICK_CHECKPOINTS if quick else CHECKPOINTS
    points = [size for size in base if size < target]
    return [*points, target]


def client_batch(rng: random.Random, users: int, size: int) -> list[tuple[Any, ...]]:
    """`size` events for random generated users, as a batch import would bring them."""
    now = datetime.now(UTC)
    rows: list[tuple[Any, ...]] = []
    for _ in range(size):
        user = rng.randint(1, users)
        stamp = now - timedelta(seconds=rng.uniform(60, 86_400))
        kind = rng.random()
        if kind < 0.45:
            event_type = "app_open"
            value: dict[str, Any] = {
                "platform": rng.choice(["ios", "android", "web"]),
                "app_version": "2.4.1",
                "session_id": str(uuid.uuid4()),
                "source": "launcher",
                "cold_start": rng.random() < 0.3,
                "launch_duration_ms": rng.randint(200, 2500),
                "locale": "en-US",
            }
        elif kind < 0.93:
            event_type = "steps_import"
            day = stamp.replace(hour=0, minute=0, second=0, microsecond=0)
            value = {
                "steps": rng.randint(0, 18_000),
                "source": "apple_health",
                "period_start": day.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "period_end": (day + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "device": "Apple Watch Series 9",
                "external_id": uuid.uuid4().hex,
            }
        else:
            event_type = "goal_complete"
            value = {
                "goal_id": queries.goal_uuid(user, rng.randrange(queries.GOALS_PER_USER)),
                "goal_type": "steps",
                "target": 8000,
                "achieved": rng.randint(8000, 12_000),
                "unit": "steps",
                "period": "daily",
                "streak_days": rng.randint(1, 40),
            }
        rows.append(
            (uuid.uuid4(), queries.user_uuid(user), stamp, event_type, json.dumps(value), False)
        )
    return rows


def copy_batch(conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]]) -> float:
    """COPY `rows` into the table in one transaction; seconds until the commit returned."""
    started = time.perf_counter()
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(
            "copy public.engagement_events"
            ' (id, user_id, "timestamp", event_type, value, is_deleted) from stdin'
        ) as copy,
    ):
        for row in rows:
            copy.write_row(row)
    return time.perf_counter() - started


def plot(points: list[dict[str, Any]], path: Path, batch: int) -> None:
    """Two panels over table size: ingest rates, and timeline latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [p["rows"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(
        sizes,
        [p["copy_events_per_s"] for p in points],
        "o-",
        label=f"COPY, {batch:,}-event batches",
    )
    fills = [(p["rows"], p["fill_events_per_s"]) for p in points if p.get("fill_events_per_s")]
    if fills:
        left.plot(*zip(*fills, strict=True), "s--", label="INSERT ... SELECT (bulk)")
    left.set_xscale("log")
    left.set_xlabel("rows in engagement_events")
    left.set_ylabel("events/s")
    left.set_ylim(bottom=0)
    left.set_title("Ingest rate, all indexes (fsync on)")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(sizes, [p["timeline_p50_ms"] for p in points], "o-", label="p50")
    right.plot(sizes, [p["timeline_p99_ms"] for p in points], "s-", label="p99")
    right.axhline(5.0, color="red", linestyle=":", label="bar: p99 < 5 ms")
    right.set_xscale("log")
    right.set_xlabel("rows in engagement_events")
    right.set_ylabel("ms")
    right.set_ylim(bottom=0)
    right.set_title("User timeline through RLS (latest 50)")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=int,
        default=None,
        help="final table size (default 1,000,000; --full 10,000,000; --quick 50,000)",
    )
    parser.add_argument("--full", action="store_true", help="grow to 10,000,000 rows")
    parser.add_argument("--users", type=int, default=None, help="users (default 10,000)")
    parser.add_argument(
        "--runs", type=int, default=None, help="timeline runs per size (default 500)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    target = args.events or (
        queries.QUICK_EVENTS
        if args.quick
        else queries.FULL_EVENTS
        if args.full
        else queries.DEFAULT_EVENTS
    )
    users = args.users or (queries.QUICK_USERS if args.quick else queries.DEFAULT_USERS)
    runs = args.runs or (30 if args.quick else 500)
    batch = 1_000 if args.quick else BATCH
    _, img_dir = common.output_dirs(args)
    if args.results_dir is None and args.quick:
        args.results_dir = img_dir  # the plot and the results of a smoke run stay together
    timeline = next(q for q in queries.QUERIES if q.name == "timeline")
    rng = random.Random(11)
    points: list[dict[str, Any]] = []
    figures: dict[str, Any] = {}
    cluster = localcluster.start(durable=True, extra_settings=("max_wal_size=4GB",))
    try:
        cluster.prepare_database(common.BENCH_DB)
        with cluster.connect("postgres", common.BENCH_DB) as conn:
            queries.create_users(conn, users)
            t_end = conn.execute(
                "select to_char(now() - interval '1 day', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            ).fetchone()
        assert t_end is not None
        data = queries.DataSet(users=users, events=target, t_end=str(t_end[0]))
        generated = 0
        with (
            cluster.connect("postgres", common.BENCH_DB) as owner,
            cluster.connect("authenticator", common.BENCH_DB) as api,
        ):
            for size in checkpoints(target, args.quick):
                point: dict[str, Any] = {}
                fill_rows, fill_s = 0, 0.0
                while generated < size:
                    step = min(FILL_CHUNK, size - generated)
                    fill_s += queries.generate_events(owner, data, generated, generated + step)
                    generated += step
                    fill_rows += step
                if fill_rows:
                    point["fill_events_per_s"] = round(fill_rows / fill_s)
                owner.execute("analyze public.engagement_events")
                copies = [copy_batch(owner, client_batch(rng, users, batch)) for _ in range(3)]
                point["copy_events_per_s"] = round(batch / common.median(copies))
                latency = queries.measure(api, timeline, rng, users, runs)
                point["timeline_p50_ms"] = latency["p50_ms"]
                point["timeline_p99_ms"] = latency["p99_ms"]
                sizes = queries.table_sizes(owner)
                point["rows"] = sizes["rows"]
                point["total_mib"] = sizes["total_mib"]
                points.append(point)
                common.print_figures(f"{sizes['rows']:,} rows", list(point.items()))
                # Written at every size, so that a long run stopped early still leaves figures.
                figures = _save(args, machine, img_dir, points, target, users, batch, runs)
    finally:
        cluster.stop()
    return figures


def _save(
    args: argparse.Namespace,
    machine: dict[str, Any],
    img_dir: Path,
    points: list[dict[str, Any]],
    target: int,
    users: int,
    batch: int,
    runs: int,
) -> dict[str, Any]:
    """Write the plot and the results file for the sizes measured so far."""
    image = img_dir / "growth.png"
    plot(points, image, batch)
    print(f"plot: {image}")
    figures: dict[str, Any] = {
        "target_rows": target,
        "complete": points[-1]["rows"] >= target,
        "users": users,
        "batch": batch,
        "timeline_runs": runs,
        "points": points,
        "plot": image.name,
    }
    common.write_results("growth", figures, args, machine)
    return figures


if __name__ == "__main__":  # the same as python -m bench growth
    from bench.__main__ import main

    sys.exit(main(["growth", *sys.argv[1:]]))
