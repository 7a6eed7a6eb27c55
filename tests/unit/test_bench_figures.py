"""How the benchmarks print their figures (bench/common.print_figures)."""

from __future__ import annotations

import pytest

from bench import common


def test_a_ratio_prints_with_its_two_decimals(capsys: pytest.CaptureFixture[str]) -> None:
    # One decimal would print 0.55 as 0.6, beside a bar of 0.6 that was not met.
    common.print_figures("ingest", [("ratio (bar 0.6)", 0.55), ("events/s", 19196.25)])
    out = capsys.readouterr().out
    assert "ratio (bar 0.6)  0.55\n" in out
    assert "events/s         19,196.25\n" in out
