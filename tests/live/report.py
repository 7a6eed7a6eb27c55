"""The live suite's record: every check it made against the real project, written as Markdown.

The report is what an auditor reads next to docs/rls-audit.md, so it holds what was asked,
what the project answered (status, PostgREST or Auth error code, message) and the measured
Realtime latencies, but never a key, a token or a password: the project is named by its host
only, and every text that goes in is scrubbed of the secrets the run knows about.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

Outcome = Literal["pass", "fail", "skip", "info"]

LATENCY_TARGET_MS = 500.0
"""Realtime's target from the design: an insert reaches its subscriber within 500 ms."""

REDACTED = "[redacted]"


@dataclass(frozen=True)
class Check:
    """One thing the suite tried, and what happened."""

    area: str
    who: str
    what: str
    expected: str
    outcome: Outcome
    observed: str
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Latency:
    """Delivery times of one Realtime measurement, in milliseconds."""

    name: str
    samples_ms: tuple[float, ...]
    meaning: str
    lost: int = 0

    @property
    def p50(self) -> float | None:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float | None:
        return percentile(self.samples_ms, 99)


def percentile(samples: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (the smallest sample with at least pct% of samples at or below
    it); None without samples. Nearest rank never invents a value that was not measured."""
    if not samples:
        return None
    if not 0 < pct <= 100:
        raise ValueError("pct must be in (0, 100]")
    ordered = sorted(samples)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def project_host(url: str) -> str:
    """The host of a project URL (no scheme, path, user info or query)."""
    return urlsplit(url).hostname or "(unknown host)"


@dataclass
class LiveReport:
    """Collects checks during a run and renders them; secrets never reach the output."""

    project_url: str
    secrets: list[str] = field(default_factory=list, repr=False)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    checks: list[Check] = field(default_factory=list)
    latencies: list[Latency] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    tests: list[tuple[str, str, str]] = field(default_factory=list)
    """(test id, pytest outcome, message) of every live test: a test can fail before it
    records a check (a failed seed insert, a fixture error), and the verdict must see that."""

    def add_secret(self, value: str | None) -> None:
        """Remember a value that must never appear in the report (keys, tokens, passwords)."""
        if value and len(value) >= 8 and value not in self.secrets:
            self.secrets.append(value)

    def scrub(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        return text

    def record(
        self,
        area: str,
        who: str,
        what: str,
        *,
        expected: str,
        ok: bool | None,
        observed: str,
        codes: Iterable[str | None] = (),
    ) -> Check:
        """Add one check; ``ok=None`` records a skipped check (``observed`` says why)."""
        outcome: Outcome = "skip" if ok is None else ("pass" if ok else "fail")
        check = Check(
            area=area,
            who=who,
            what=what,
            expected=expected,
            outcome=outcome,
            observed=self.scrub(observed),
            codes=tuple(self.scrub(c) for c in codes if c),
        )
        self.checks.append(check)
        return check

    def inform(
        self, area: str, who: str, what: str, *, observed: str, codes: Iterable[str | None] = ()
    ) -> Check:
        """Add an observation that no requirement applies to (it never decides the verdict)."""
        check = Check(
            area=area,
            who=who,
            what=what,
            expected="-",
            outcome="info",
            observed=self.scrub(observed),
            codes=tuple(self.scrub(c) for c in codes if c),
        )
        self.checks.append(check)
        return check

    def note(self, text: str) -> None:
        self.notes.append(self.scrub(text))

    def add_latency(self, latency: Latency) -> None:
        self.latencies.append(latency)

    def test_outcome(self, test_id: str, outcome: str, message: str = "") -> None:
        self.tests.append((test_id, outcome, self.scrub(message)))

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.outcome == "fail"]

    @property
    def failed_tests(self) -> list[str]:
        return [test_id for test_id, outcome, _ in self.tests if outcome == "failed"]

    def verdict(self) -> str:
        if self.failed or self.failed_tests:
            return "FAIL: at least one check did not behave as required."
        if not any(c.outcome == "pass" for c in self.checks):
            return "INCOMPLETE: nothing was checked."
        return "PASS: every check that ran behaved as required."

    def render(self, *, finished_at: datetime | None = None) -> str:
        finished = finished_at or datetime.now(UTC)
        lines = [
            "# Live checks against a Supabase project",
            "",
            "Written by `scripts/live-check.sh` (pytest `tests/live`); see docs/live-checks.md.",
            "",
            f"- project: `{project_host(self.project_url)}` (keys are never written here)",
            f"- run: {_utc(self.started_at)} to {_utc(finished)}",
            f"- client: Python {platform.python_version()} on {platform.system()}",
            "",
        ]
        counts = {o: sum(1 for c in self.checks if c.outcome == o) for o in _OUTCOMES}
        lines.append(
            f"{len(self.checks)} check(s): {counts['pass']} passed, {counts['fail']} failed, "
            f"{counts['skip']} skipped, {counts['info']} recorded for information."
        )
        lines.append("")
        areas: list[str] = []
        for check in self.checks:
            if check.area not in areas:
                areas.append(check.area)
        for area in areas:
            lines += [
                f"## {area}",
                "",
                "| # | who | what was tried | what must happen | outcome | observed | codes |",
                "|---|-----|----------------|------------------|---------|----------|-------|",
            ]
            number = 0
            for check in self.checks:
                if check.area != area:
                    continue
                number += 1
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            str(number),
                            _cell(check.who),
                            _cell(check.what),
                            _cell(check.expected),
                            _OUTCOME_WORDS[check.outcome],
                            _cell(check.observed),
                            _cell(", ".join(check.codes)) or "-",
                        ]
                    )
                    + " |"
                )
            lines.append("")
        if self.latencies:
            lines += [
                "## Realtime delivery latency",
                "",
                f"Target: {LATENCY_TARGET_MS:.0f} ms from commit to delivery.",
                "",
                "| measurement | samples | lost | p50 ms | p99 ms | max ms | verdict |",
                "|-------------|---------|------|--------|--------|--------|---------|",
            ]
            for latency in self.latencies:
                p50, p99 = latency.p50, latency.p99
                worst = max(latency.samples_ms) if latency.samples_ms else None
                lines.append(
                    f"| {_cell(latency.name)} | {len(latency.samples_ms)} | {latency.lost} | "
                    f"{_ms(p50)} | {_ms(p99)} | {_ms(worst)} | {latency_verdict(latency)} |"
                )
            lines.append("")
            for latency in self.latencies:
                lines.append(f"- {_cell(latency.name)}: {self.scrub(latency.meaning)}")
            lines.append("")
        if self.tests:
            lines += [
                "## Tests",
                "",
                "| test | outcome | message |",
                "|------|---------|---------|",
            ]
            for test_id, outcome, message in self.tests:
                lines.append(f"| {_cell(test_id)} | {outcome} | {_cell(message) or '-'} |")
            lines.append("")
        if self.notes:
            lines += ["## Notes", ""]
            lines += [f"- {note}" for note in self.notes]
            lines.append("")
        lines += ["## Verdict", "", self.verdict(), ""]
        return self.scrub("\n".join(lines))

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


def latency_verdict(latency: Latency) -> str:
    """Whether p99 is within the target; lost deliveries always miss it."""
    if latency.p99 is None:
        return "no samples"
    if latency.lost:
        return f"over target ({latency.lost} never delivered)"
    return "within target" if latency.p99 <= LATENCY_TARGET_MS else "over target"


_OUTCOMES: tuple[Outcome, ...] = ("pass", "fail", "skip", "info")
_OUTCOME_WORDS: dict[Outcome, str] = {
    "pass": "as required",
    "fail": "**NOT as required**",
    "skip": "skipped",
    "info": "recorded",
}


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (one line, pipes escaped, bounded)."""
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= 300 else flat[:297] + "..."


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


__all__ = [
    "LATENCY_TARGET_MS",
    "Check",
    "Latency",
    "LiveReport",
    "latency_verdict",
    "percentile",
    "project_host",
]
