"""The benchmarks of docs/performance.md still run: each in --quick mode, as a reader would.

Each runs ``python -m bench NAME --quick`` (what ``scripts/bench.sh`` runs after setup) and
checks that it printed the machine and its figures and wrote a results file whose rates are
positive. No timing is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.db


def _bench(name: str, results_dir: Path) -> tuple[str, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "bench", name, "--quick", "--results-dir", str(results_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "machine: " in done.stdout
    assert "PostgreSQL" in done.stdout
    record = json.loads((results_dir / f"{name}.json").read_text())
    assert record["benchmark"] == name
    assert record["quick"] is True
    assert record["machine"]["cores"] >= 1
    return done.stdout, record["figures"]


def test_ingest_reports_function_and_copy_rates_and_breakdown(tmp_path: Path) -> None:
    out, figures = _bench("ingest", tmp_path)
    assert set(figures["sizes"]) == {"500", "1000"}
    for size, entry in figures["sizes"].items():
        assert entry["function_events_per_second"] > 0
        assert entry["copy_rows_per_second"] > 0
        assert entry["ratio"] > 0
        # One repetition in quick mode: its own ratio, both sides timed back to back.
        assert len(entry["ratio_per_repetition"]) == 1
        assert entry["ratio_per_repetition"][0] > 0
        # The ratio is printed as it was measured, to two decimals (0.55 is not shown as 0.6
        # beside a bar of 0.6).
        shown = rf"{int(size):,} events: ratio \(bar 0\.6\) +{re.escape(str(entry['ratio']))}\n"
        assert re.search(shown, out), out
    stages = figures["breakdown_per_request"]["ms"]
    for stage in ("parse", "validate", "convert", "write"):
        assert stages[stage] > 0, stage
    assert figures["write_strategies"]
    assert all(s["rows_per_second"] > 0 for s in figures["write_strategies"].values())
    assert "events: ratio" in out
    assert "where one 500-event request's time goes" in out


def test_small_reports_both_sides_and_stores_every_event(tmp_path: Path) -> None:
    out, figures = _bench("small", tmp_path)
    assert set(figures["sizes"]) == {"1", "10"}
    for entry in figures["sizes"].values():
        for side in ("batch_import", "direct_insert"):
            assert entry[side]["events_per_s"] > 0, side
            assert entry[side]["p99_ms"] >= entry[side]["p50_ms"] > 0, side
            assert entry[side]["stored_every_event"] is True, side
            assert entry[side]["first_errors"] == [], side
        assert entry["ratio"] > 0
        # The CPU a request costs is counted (Linux: /proc): the whole machine, the function's
        # processes, the client threads (the client's is exact; /proc counts in 10 ms ticks,
        # more than a few quick requests take); the direct side runs no function.
        assert entry["batch_import"]["cpu_ms_per_request"]["machine"] is not None
        assert entry["batch_import"]["cpu_ms_per_request"]["client"] > 0
        assert entry["direct_insert"]["cpu_ms_per_request"]["machine"] is not None
        assert entry["direct_insert"]["cpu_ms_per_request"]["function"] is None
    # 80 one-event requests take the function well over a tick of CPU.
    one_event = figures["sizes"]["1"]["batch_import"]["cpu_ms_per_request"]
    assert one_event["machine"] > 0
    assert one_event["function"] > 0
    assert "batch_import p50 / p99 ms" in out
    assert "batch_import CPU ms/request  machine" in out


def test_cold_start_reports_import_breakdown_and_lazy_clients(tmp_path: Path) -> None:
    out, figures = _bench("cold_start", tmp_path)
    assert figures["import_main_ms_importtime"] > 0
    assert figures["first_answer_ms"] > 0
    assert figures["first_stored_event_ms"] >= figures["first_answer_ms"]
    modules = [m["module"] for m in figures["top_modules_by_cumulative_import"]]
    assert len(modules) == 15
    assert "functions.handlers" in modules
    # The heavy clients are imported when first needed, not by main.py.
    heavy = figures["heavy_modules_after_import"]
    assert not [m for m in heavy if m.startswith(("supabase", "google.cloud.secretmanager"))]
    assert "heavy clients loaded by import main" in out


def test_validation_reports_rates_ratios_and_profile(tmp_path: Path) -> None:
    out, figures = _bench("validation", tmp_path)
    rates = figures["events_per_second"]
    for name in (
        "validate_mixed",
        "validate_all_local",
        "validate_all_offset",
        "copy",
        "sink_write",
    ):
        assert rates[name] > 0, name
    valid, rejected = figures["valid_rejected_mixed"]
    assert valid + rejected == figures["events_per_batch"]
    assert rejected > 0  # the mixed batch carries invalid events on purpose
    assert figures["ratio_validate_mixed_to_copy"] > 0
    # The profile is of the package's own validation code, whatever its functions are called.
    assert any("functions/validation.py" in row["function"] for row in figures["profile_mixed"])
    assert "ratio mixed / COPY" in out


def test_unknown_benchmark_is_refused_with_the_list() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "nonsense"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "ingest" in done.stderr
    assert "validation" in done.stderr
