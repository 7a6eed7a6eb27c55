"""Realtime latency: from the commit of an insert to its change arriving at a wal2json consumer.

Supabase Realtime's `postgres_changes` reads the table's changes from a logical replication slot
decoded by wal2json (format version 2). This benchmark puts two consumers on the local database,
each on its own slot, limited to `public.engagement_events` (the table of the
`supabase_realtime` publication):

- stream: `pg_recvlogical --plugin=wal2json` streaming over the replication protocol; a change is
  delivered when its JSON line is read from the tool's output;
- poll: `pg_logical_slot_get_changes(...)` every `--poll-interval-ms`, the way Realtime polls
  its slot; a change is delivered when the poll that returns it comes back.

The clock starts when the client's COMMIT returns (the insert is acknowledged) and stops at
delivery, both measured in this process. Three shapes: single inserts (one event per
transaction, spaced out), burst transactions (100 events in one transaction, as a batch import
writes them) and burst commits (100 single-event transactions back to back).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

from bench import common

TABLE = "public.engagement_events"
WAL2JSON_OPTIONS: tuple[tuple[str, str], ...] = (
    # The options Realtime passes to wal2json: one JSON object per change, with the key columns,
    # the commit timestamp and the column type oids; only the tables it serves.
    ("format-version", "2"),
    ("include-transaction", "false"),
    ("include-timestamp", "true"),
    ("include-pk", "true"),
    ("include-type-oids", "true"),
    ("actions", "insert,update,delete"),
    ("add-tables", TABLE),
)
INSERT_ONE = (
    "insert into public.engagement_events (id, user_id, event_type, value)"
    ' values (%s, %s, \'app_open\', \'{"platform": "android", "source": "launcher"}\')'
)


def _change_id(change: dict[str, Any]) -> str | None:
    """The `id` column of a wal2json v2 insert, or None for anything else."""
    if change.get("action") != "I":
        return None
    for column in change.get("columns", []):
        if column.get("name") == "id":
            return str(column.get("value"))
    return None


@dataclass
class Deliveries:
    """When each event id was delivered to one consumer (perf_counter seconds)."""

    at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    arrived: threading.Condition = field(init=False)
    lines: int = 0

    def __post_init__(self) -> None:
        self.arrived = threading.Condition(self.lock)

    def record(self, ids: list[str], when: float) -> None:
        with self.arrived:
            for each in ids:
                self.at.setdefault(each, when)
            self.lines += len(ids)
            self.arrived.notify_all()

    def wait_for(self, ids: list[str], timeout: float) -> bool:
        deadline = time.perf_counter() + timeout
        with self.arrived:
            while not all(each in self.at for each in ids):
                left = deadline - time.perf_counter()
                if left <= 0:
                    return False
                self.arrived.wait(left)
        return True


def _read_stream(output: IO[bytes], deliveries: Deliveries) -> None:
    """Record each insert line pg_recvlogical writes, at the moment it is read."""
    for line in output:
        when = time.perf_counter()
        text = line.strip()
        if not text:
            continue
        change_id = _change_id(json.loads(text))
        if change_id is not None:
            deliveries.record([change_id], when)


def _poll(
    db: common.BenchDatabase,
    slot: str,
    interval_s: float,
    deliveries: Deliveries,
    stop: threading.Event,
) -> None:
    """Poll the slot on a fixed interval, as Realtime does; a poll's changes arrive together."""
    options = [value for pair in WAL2JSON_OPTIONS for value in pair]
    placeholders = ", ".join(["%s"] * len(options))
    query = f"select data from pg_logical_slot_get_changes(%s, null, null, {placeholders})"
    with db.connect() as conn:
        next_poll = time.perf_counter()
        while not stop.is_set():
            rows = conn.execute(query, [slot, *options]).fetchall()
            when = time.perf_counter()
            ids = [cid for (data,) in rows if (cid := _change_id(json.loads(str(data))))]
            if ids:
                deliveries.record(ids, when)
            next_poll += interval_s
            time.sleep(max(0.0, next_poll - time.perf_counter()))


def _latencies(committed: dict[str, float], deliveries: Deliveries) -> tuple[list[float], int]:
    """(latencies in ms of the delivered events, how many were never delivered)."""
    values = [
        (deliveries.at[event] - at) * 1000
        for event, at in committed.items()
        if event in deliveries.at
    ]
    return values, len(committed) - len(values)


def _summary(values: list[float], missing: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"delivered": len(values), "not_delivered": missing}
    if values:
        for pct in (50, 95, 99):
            figures[f"p{pct}_ms"] = round(common.percentile(values, pct), 2)
        figures["max_ms"] = round(max(values), 2)
        figures["min_ms"] = round(min(values), 2)
    return figures


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--singles", type=int, default=None, help="single inserts (default 300; --quick 20)"
    )
    parser.add_argument(
        "--bursts", type=int, default=None, help="bursts of each kind (default 20; --quick 2)"
    )
    parser.add_argument("--burst-size", type=int, default=100, help="events per burst (100)")
    parser.add_argument(
        "--poll-interval-ms", type=float, default=100.0, help="the poller's interval (100 ms)"
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    machine = common.machine_info()
    common.print_machine(machine)
    singles = args.singles or (20 if args.quick else 300)
    bursts = args.bursts or (2 if args.quick else 20)
    size = args.burst_size
    rng = random.Random(5)
    shapes: dict[str, dict[str, float]] = {
        "single": {},
        "burst_transaction": {},
        "burst_commits": {},
    }
    with common.bench_database(durable=True) as db:
        user = str(common.create_users(db, 1)[0])
        with db.connect() as conn:
            publication = conn.execute(
                "select count(*) from pg_publication_tables where pubname = 'supabase_realtime'"
                " and schemaname = 'public' and tablename = 'engagement_events'"
            ).fetchone()
            if not publication or publication[0] != 1:
                raise RuntimeError("engagement_events is not in the supabase_realtime publication")
            for slot in ("bench_stream", "bench_poll"):
                conn.execute("select pg_create_logical_replication_slot(%s, 'wal2json')", (slot,))
        stream_at, poll_at = Deliveries(), Deliveries()
        argv = [
            str(db.cluster.bindir / "pg_recvlogical"),
            "--dbname",
            db.cluster.dsn("postgres", db.name),
            "--slot",
            "bench_stream",
            "--start",
            "--file",
            "-",
            "--fsync-interval",
            "0",
            "--no-loop",
        ]
        for name, value in WAL2JSON_OPTIONS:
            argv += ["--option", f"{name}={value}"]
        receiver = subprocess.Popen(argv, stdout=subprocess.PIPE)
        assert receiver.stdout is not None
        reader = threading.Thread(target=_read_stream, args=(receiver.stdout, stream_at))
        reader.start()
        stop = threading.Event()
        poller = threading.Thread(
            target=_poll, args=(db, "bench_poll", args.poll_interval_ms / 1000, poll_at, stop)
        )
        poller.start()
        try:
            with db.connect() as conn:
                # Warm up both consumers: the stream has connected when its first change arrives.
                warm = str(uuid.uuid4())
                conn.execute(INSERT_ONE, (warm, user))
                for consumer in (stream_at, poll_at):
                    if not consumer.wait_for([warm], 30):
                        raise RuntimeError("a wal2json consumer delivered nothing in 30 s")
                print(f"measuring {singles} single inserts", flush=True)
                for _ in range(singles):
                    event = str(uuid.uuid4())
                    conn.execute(INSERT_ONE, (event, user))
                    shapes["single"][event] = time.perf_counter()
                    stream_at.wait_for([event], 5)
                    poll_at.wait_for([event], 5)
                    # A random pause as long as a poll interval or more, so that inserts land
                    # at random points of the poller's cycle, as independent users' would.
                    time.sleep(rng.uniform(0.005, 0.005 + 1.5 * args.poll_interval_ms / 1000))
                print(f"measuring {bursts} bursts of {size} events of each kind", flush=True)
                for _ in range(bursts):
                    ids = [str(uuid.uuid4()) for _ in range(size)]
                    with conn.transaction(), conn.cursor() as cur:
                        cur.executemany(INSERT_ONE, [(each, user) for each in ids])
                    done = time.perf_counter()
                    shapes["burst_transaction"].update(dict.fromkeys(ids, done))
                    for consumer in (stream_at, poll_at):
                        consumer.wait_for(ids, 10)
                    ids = [str(uuid.uuid4()) for _ in range(size)]
                    for each in ids:
                        conn.execute(INSERT_ONE, (each, user))
                        shapes["burst_commits"][each] = time.perf_counter()
                    for consumer in (stream_at, poll_at):
                        consumer.wait_for(ids, 10)
                    time.sleep(rng.uniform(0.05, 0.2))
        finally:
            stop.set()
            poller.join()
            receiver.terminate()
            receiver.wait(timeout=10)
            reader.join(timeout=10)
    figures: dict[str, Any] = {
        "singles": singles,
        "bursts": bursts,
        "burst_size": size,
        "poll_interval_ms": args.poll_interval_ms,
        "synchronous_commit": "on",
    }
    for consumer_name, deliveries in (("stream", stream_at), ("poll", poll_at)):
        for shape, committed in shapes.items():
            values, missing = _latencies(committed, deliveries)
            summary = _summary(values, missing)
            figures[f"{consumer_name}_{shape}"] = summary
            common.print_figures(
                f"{consumer_name}: {shape} (commit returned -> change delivered)",
                [(key, value) for key, value in summary.items()],
            )
    common.write_results("realtime", figures, args, machine)
    return figures


if __name__ == "__main__":  # the same as python -m bench realtime
    from bench.__main__ import main

    sys.exit(main(["realtime", *sys.argv[1:]]))
