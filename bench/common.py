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
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from localdb import cluster as localcluster

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
def bench_database(*, durable: bool = True, max_connections: int = 300) -> Iterator[BenchDatabase]:
    """A fresh cluster with one database prepared as Supabase would be (migrations and seed).

    ``durable=True`` (the default) keeps fsync and synchronous commit on, so write figures
    include the cost a real database pays.
    """
    cluster = localcluster.start(durable=durable, max_connections=max_connections)
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
    print(f"results: {_shown(path)}")
    return path


def _shown(path: Path) -> str:
    """A path relative to the project when it is inside it (what the doc and logs show)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def print_figures(title: str, rows: Sequence[tuple[str, object]]) -> None:
    """Print ``key: value`` lines under a title, aligned."""
    print(f"== {title}")
    width = max((len(key) for key, _ in rows), default=0)
    for key, value in rows:
        shown = f"{value:,.1f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    sys.stdout.flush()
