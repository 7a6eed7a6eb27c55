"""The database benchmarks still run and still produce their figures (smoke runs, small sizes).

Each runs through the `python -m bench` dispatcher in --quick mode with its own throwaway
cluster and writes its results file into a temporary directory; the assertions are about what
the figures say (rows delivered, rows isolated, plans chosen), never about how fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main as bench_main

pytestmark = pytest.mark.db


def _run(name: str, tmp_path: Path, *options: str) -> dict[str, Any]:
    assert bench_main([name, "--quick", "--results-dir", str(tmp_path), *options]) == 0
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["benchmark"] == name
    assert record["machine"]["cores"]
    figures: dict[str, Any] = record["figures"]
    return figures


def test_concurrent_writers_through_rls_are_isolated_and_error_free(tmp_path: Path) -> None:
    figures = _run("concurrency", tmp_path, "--writers", "40", "--readers", "4", "--seconds", "1.5")
    assert figures["writes"]["operations"] > 0
    assert figures["reads"]["operations"] > 0
    assert figures["errors"] == 0, figures["writes"]["first_errors"]
    assert figures["leaks"] == 0
    isolation = figures["isolation"]
    assert isolation["users_checked"] == 40
    assert isolation["rows_stored"] == isolation["rows_acknowledged"] > 0
    assert isolation["own_rows_missing"] == isolation["foreign_rows_seen"] == 0


def test_every_insert_reaches_both_wal2json_consumers(tmp_path: Path) -> None:
    figures = _run("realtime", tmp_path, "--singles", "8", "--bursts", "1", "--burst-size", "20")
    expected = {"single": 8, "burst_transaction": 20, "burst_commits": 20}
    for consumer in ("stream", "poll"):
        for shape, count in expected.items():
            measured = figures[f"{consumer}_{shape}"]
            assert measured["delivered"] == count, (consumer, shape)
            assert measured["not_delivered"] == 0
            assert "p99_ms" in measured


def test_queries_return_rows_and_the_timeline_uses_its_index(tmp_path: Path) -> None:
    figures = _run("queries", tmp_path, "--events", "20000", "--users", "200", "--runs", "20")
    assert figures["table"]["rows"] >= 20_000
    applied = figures["migrations_applied_s"]
    assert any(name.startswith("20241220") for name in applied)
    for state in ("before", "after"):
        results = figures[state]
        assert set(results) == {
            "baseline",
            "timeline",
            "containment",
            "containment_own",
            "event_type",
            "daily_aggregate",
        }
        assert results["timeline"]["mean_rows"] == 50
        assert results["timeline"]["uses_intended_index"]
        assert results["containment"]["mean_rows"] > 0
        assert results["event_type"]["mean_rows"] > 0
        assert "Buffers:" in results["timeline"]["plan"]


def test_growth_measures_every_size_and_draws_the_plot(tmp_path: Path) -> None:
    figures = _run("growth", tmp_path, "--events", "20000", "--runs", "20")
    points = figures["points"]
    sizes = [point["rows"] for point in points]
    assert len(points) >= 2
    assert sizes == sorted(sizes)
    assert sizes[-1] >= 20_000
    assert all(point["copy_events_per_s"] > 0 for point in points)
    assert all(point["timeline_p99_ms"] >= point["timeline_p50_ms"] > 0 for point in points)
    assert (tmp_path / "growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
