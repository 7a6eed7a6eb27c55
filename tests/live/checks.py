"""Records a test's checks in the report as they happen, and fails the test at its end.

A live test makes many attempts; stopping at the first surprise would hide the others from
the audit, so each attempt is recorded and the test fails once, listing every failed one.
"""

from __future__ import annotations

from collections.abc import Iterable

from tests.live.api import Answer, Caller
from tests.live.report import Check, LiveReport


class Checks:
    """The checks of one area of the report, made by one test."""

    def __init__(self, report: LiveReport, area: str) -> None:
        self._report = report
        self._area = area
        self._made: list[Check] = []

    def check(
        self,
        who: str | Caller,
        what: str,
        *,
        expected: str,
        ok: bool,
        observed: str,
        codes: Iterable[str | None] = (),
    ) -> bool:
        made = self._report.record(
            self._area,
            who.name if isinstance(who, Caller) else who,
            what,
            expected=expected,
            ok=ok,
            observed=observed,
            codes=codes,
        )
        self._made.append(made)
        return ok

    def answer(
        self, who: str | Caller, what: str, answer: Answer, *, expected: str, ok: bool
    ) -> bool:
        """A check whose observation is one Data API answer (status, code, message, rows)."""
        return self.check(
            who, what, expected=expected, ok=ok, observed=answer.describe(), codes=[answer.code]
        )

    def skip(self, who: str, what: str, *, expected: str, why: str) -> None:
        made = self._report.record(self._area, who, what, expected=expected, ok=None, observed=why)
        self._made.append(made)

    def assert_all(self) -> None:
        failed = [c for c in self._made if c.outcome == "fail"]
        assert not failed, "; ".join(f"{c.who}: {c.what}: got {c.observed}" for c in failed)
