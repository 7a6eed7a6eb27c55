"""What every benchmark shares: the machine description, a prepared local database, timing
statistics, and writing the results file.

Kept small and stable: other benchmark modules import from here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import psycopg

from localdb import cluster as localcluster
from localdb import functions_local

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
"""Where full runs write ``<name>.json`` (committed with the figures in docs/performance.md)."""
IMG_DIR = ROOT / "docs" / "img"
"""Where full runs write their plots."""

BENCH_DB = "engagement_bench"


# --- the machine -------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def postgres_version() -> str:
    """The server version of the PostgreSQL binaries the local cluster runs."""
    try:
        bindir = localcluster.find_bindir()
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=True
        )
    except (localcluster.LocalDbError, OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, operating system, PostgreSQL and Python versions."""
    load: list[float] | None = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": _ram_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "postgres": postgres_version(),
        "python": platform.python_version(),
        "load_average": load,
    }


def print_machine(info: dict[str, Any]) -> None:
    print(
        f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, "
        f"{info['os']}; {info['postgres']}; Python {info['python']}; "
        f"load average {info['load_average']}"
    )


# --- statistics --------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(action: Callable[[], object]) -> float:
    """Seconds ``action()`` took (perf_counter)."""
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


# --- the database ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchDatabase:
    """A migrated and seeded database in a throwaway cluster."""

    cluster: localcluster.Cluster
    name: str

    @property
    def url(self) -> str:
        return self.cluster.url("postgres", self.name)

    def connect(
        self, user: str = "postgres", *, autocommit: bool = True
    ) -> psycopg.Connection[Any]:
        return self.cluster.connect(user, self.name, autocommit=autocommit)


@contextlib.contextmanager
def bench_database(
    *, durable: bool = True, max_connections: int = 300, extra_settings: Sequence[str] = ()
) -> Iterator[BenchDatabase]:
    """A fresh cluster with one database prepared as Supabase would be (migrations and seed).

    ``durable=True`` (the default) keeps fsync and synchronous commit on, so write figures
    include the cost a real database pays. ``extra_settings`` are more ``name=value`` server
    settings (e.g. ``shared_preload_libraries=pg_stat_statements``).
    """
    cluster = localcluster.start(
        durable=durable, max_connections=max_connections, extra_settings=extra_settings
    )
    try:
        cluster.prepare_database(BENCH_DB)
        yield BenchDatabase(cluster, BENCH_DB)
    finally:
        cluster.stop()


def create_users(db: BenchDatabase, count: int) -> list[uuid.UUID]:
    """``count`` new users in auth.users (ids are random uuid4), returned in insert order."""
    ids = [uuid.uuid4() for _ in range(count)]
    with (
        db.connect() as conn,
        conn.cursor() as cur,
        cur.copy("copy auth.users (id, aud, role, email) from stdin") as copy,
    ):
        for n, user_id in enumerate(ids):
            copy.write_row((user_id, "authenticated", "authenticated", f"bench{n}@example.com"))
    return ids


# --- arguments and results ---------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke mode: small sizes, a few seconds; results go to a temporary directory",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=None,
        help="where to write <name>.json and plots (default: bench/results and docs/img for "
        "full runs, a new temporary directory for --quick)",
    )


def output_dirs(args: argparse.Namespace) -> tuple[Path, Path]:
    """(results directory, image directory) for this run, created."""
    if args.results_dir is not None:
        results = img = Path(args.results_dir)
    elif args.quick:
        results = img = Path(tempfile.mkdtemp(prefix="bench-quick-"))
    else:
        results, img = RESULTS_DIR, IMG_DIR
    results.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    return results, img


def write_results(
    name: str, figures: dict[str, Any], args: argparse.Namespace, machine: dict[str, Any]
) -> Path:
    """Write ``<results dir>/<name>.json``: the figures, the machine, when, and in which mode."""
    results_dir, _ = output_dirs(args)
    path = results_dir / f"{name}.json"
    record = {
        "benchmark": name,
        "quick": bool(args.quick),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "figures": figures,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(f"results: {shown(path)}")
    return path


def shown(path: Path) -> str:
    """A path relative to the project when it is inside it (what the doc and logs show)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def print_figures(title: str, rows: Sequence[tuple[str, object]]) -> None:
    """Print ``key: value`` lines under a title, aligned; a float with the decimals it has, up
    to three (a ratio of 0.55 reads 0.55, not 0.6 beside a bar of 0.6)."""
    print(f"== {title}")
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        shown = f"{round(value, 3):,}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    sys.stdout.flush()


# --- realistic events --------------------------------------------------------------------------

LOCAL_ZONES = (
    "America/New_York",
    "Europe/London",
    "Europe/Berlin",
    "Asia/Kathmandu",
    "Australia/Lord_Howe",
    "America/Santiago",
    "America/Los_Angeles",
    "Asia/Tokyo",
)
"""Zones of the users whose devices send local wall-clock times (DST in both hemispheres,
a 45-minute offset, a 30-minute DST shift)."""

_OFFSETS = ("+01:00", "-05:00", "+05:45", "+10:30", "-03:00", "+00:00", "+09:00")


def make_events(
    count: int,
    users: Sequence[uuid.UUID],
    *,
    seed: int = 1,
    local_share: float = 0.3,
    invalid_share: float = 0.0,
    with_event_id_share: float = 0.5,
) -> list[dict[str, Any]]:
    """``count`` events as a wearables integration sends them, JSON-ready and deterministic.

    The three known event types in equal parts, with payloads their schemas accept (each step
    count for a period of its own); half carry an ``event_id``. Timestamps (2024, in the past): ``local_share`` are local wall-clock times
    without offset and with the event's ``timezone``; of the rest half end in ``Z`` and half
    carry an offset. ``invalid_share`` of the events are broken in one of the ways senders
    break them (an unknown payload property, a timestamp in a DST gap, an unknown zone, a
    malformed timestamp, a wrong type).
    """
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    for n in range(count):
        kind = n % 3
        day = rng.randrange(1, 366)
        moment = datetime(2024, 1, 1, tzinfo=UTC).replace(
            hour=rng.randrange(24), minute=rng.randrange(60), second=rng.randrange(60)
        ) + timedelta(days=day - 1)
        wall = moment.strftime("%Y-%m-%dT%H:%M:%S")
        event: dict[str, Any] = {"user_id": str(users[n % len(users)])}
        roll = rng.random()
        if roll < local_share:
            # Daytime, away from the night-time hours in which clock changes happen.
            event["timestamp"] = moment.replace(hour=8 + moment.hour % 14).strftime(
                "%Y-%m-%dT%H:%M:%S"
            )
            event["timezone"] = LOCAL_ZONES[n % len(LOCAL_ZONES)]
        elif roll < local_share + (1 - local_share) / 2:
            event["timestamp"] = wall + "Z"
        else:
            event["timestamp"] = wall + _OFFSETS[n % len(_OFFSETS)]
        if kind == 0:
            event["event_type"] = "app_open"
            event["value"] = {
                "platform": ("ios", "android", "web")[n % 3],
                "app_version": f"3.{n % 7}.{n % 11}",
                "source": ("launcher", "push_notification", "widget")[n % 3],
                "cold_start": n % 2 == 0,
                "launch_duration_ms": rng.randrange(200, 4000),
            }
        elif kind == 1:
            event["event_type"] = "goal_complete"
            event["value"] = {
                "goal_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "goal_type": ("steps", "workout", "hydration")[n % 3],
                "target": 10000,
                "achieved": rng.randrange(10000, 15000),
                "unit": "steps",
                "period": "daily",
                "streak_days": rng.randrange(0, 60),
            }
        else:
            # An hour's count, for an hour drawn from 25 years: the period identifies the
            # measurement (x-identity), so each generated one is a measurement of its own.
            start = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(
                minutes=rng.randrange(25 * 365 * 24 * 60)
            )
            event["event_type"] = "steps_import"
            event["value"] = {
                "steps": rng.randrange(0, 30000),
                "source": ("apple_health", "google_fit", "fitbit", "garmin")[n % 4],
                "period_start": start.strftime("%Y-%m-%dT%H:%M:00Z"),
                "period_end": (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:00Z"),
                "device": "Apple Watch Series 9",
            }
        if rng.random() < with_event_id_share:
            event["event_id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if invalid_share and rng.random() < invalid_share:
            _break(event, n)
        events.append(event)
    return events


def _break(event: dict[str, Any], n: int) -> None:
    """Make ``event`` invalid in one of five ways senders do."""
    way = n % 5
    if way == 0:
        event["value"] = {**event["value"], "unexpected_property": 1}
    elif way == 1:
        event["timestamp"] = "2024-03-10T02:30:00"  # inside the DST gap in New York
        event["timezone"] = "America/New_York"
    elif way == 2:
        event["timestamp"] = event["timestamp"][:19]
        event["timezone"] = "Mars/Olympus_Mons"
    elif way == 3:
        event["timestamp"] = "01/12/2024 07:30"
    else:
        event["user_id"] = 12345


# --- COPY, the database's own bulk load --------------------------------------------------------

COPY_EVENTS = (
    'copy public.engagement_events (id, user_id, "timestamp", event_type, value) from stdin'
)


class EventLike(Protocol):
    """What a validated event has (functions.validation.NormalisedEvent does)."""

    @property
    def id(self) -> uuid.UUID | None: ...
    @property
    def identity(self) -> str | None: ...
    @property
    def user_id(self) -> uuid.UUID: ...
    @property
    def timestamp(self) -> datetime: ...
    @property
    def event_type(self) -> str: ...
    @property
    def value(self) -> dict[str, Any]: ...


_BASELINE_IDS = uuid.UUID("5b0c8f8e-3c1a-4d2e-9f10-6a7b8c9d0e1f")


def baseline_id(row: EventLike) -> uuid.UUID:
    """The id a baseline (COPY, a direct insert) stores a row under: its event_id, else a
    uuid5 of its identity text. The functions' own derived ids are a keyed hash computed in
    the database; a baseline only needs an id that is the same for the same event."""
    if row.id is not None:
        return row.id
    return uuid.uuid5(_BASELINE_IDS, row.identity or "")


def render_copy(rows: Sequence[EventLike]) -> bytes:
    """The rows in COPY's text format, ready to stream: what ``psql \\copy`` would send."""
    lines = []
    for row in rows:
        value = json.dumps(row.value, separators=(",", ":"), ensure_ascii=False)
        # JSON escapes tabs, newlines and control characters itself; COPY's text format
        # additionally needs each backslash doubled.
        lines.append(
            f"{baseline_id(row)}\t{row.user_id}\t{row.timestamp.isoformat()}\t{row.event_type}\t"
            f"{value.replace(chr(92), chr(92) * 2)}\n"
        )
    return "".join(lines).encode()


def copy_rows(db: BenchDatabase, data: bytes) -> float:
    """Seconds to COPY pre-rendered rows into engagement_events in one transaction."""
    with db.connect() as conn, conn.cursor() as cur:
        started = time.perf_counter()
        with conn.transaction(), cur.copy(COPY_EVENTS) as copy:
            copy.write(data)
        return time.perf_counter() - started


# --- the functions, served over HTTP ------------------------------------------------------------


def serve_function(
    target: str, database_url: str, *, extra_env: dict[str, str] | None = None
) -> functions_local.FunctionServer:
    """``target`` served by functions-framework (gunicorn, as on Cloud Functions) on a free
    port, writing to ``database_url`` with the direct sink; its log lines are discarded.

    The server's JWT secret is made for this run: mint tokens with
    ``functions_local.mint_service_token(server.jwt_secret)``. Stop it with ``server.stop()``.
    """
    return functions_local.start(
        target,
        database_url,
        secrets.token_urlsafe(48),
        extra_env=extra_env,
        quiet=True,
        timeout=60,
    )
