"""The audit record is produced by the tests themselves, and says so when something leaks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from localdb import isolation, pgtap, rls_audit


@pytest.mark.db  # scripts/rls-audit.sh starts a cluster
def test_audit_command_writes_a_passing_record(tmp_path: Path) -> None:
    output = tmp_path / "rls-audit.md"
    assert rls_audit.main(["--output", str(output), "--users", "10", "--seconds", "1"]) == 0
    text = output.read_text()
    assert "PASS: no user could read or change another user's events." in text
    assert "leaks, unexpected errors and final mismatches found: 0" in text
    # Every attempt of the RLS pgTAP file appears as a row of the record.
    statements = "\n".join(
        line for line in rls_audit.RLS_TESTS.read_text().splitlines() if not line.startswith("--")
    )
    quoted = re.findall(r"'((?:[^'\n]|'')*? \| (?:[^'\n]|'')*? \| (?:[^'\n]|'')*?)'", statements)
    descriptions = [d.replace("''", "'") for d in quoted]
    assert len(descriptions) >= 30
    for description in descriptions:
        who, tried, _ = (part.strip() for part in description.split("|"))
        assert f"| {who} | {tried} |" in text


def test_a_failed_attempt_and_a_leak_make_the_record_fail() -> None:
    tap = pgtap.parse(
        Path("rls.sql"),
        "1..2\nok 1 - user A | select B's events | sees none\n"
        "not ok 2 - user A | delete B's events | refused (42501)\n",
    )
    report = isolation.Report(users=2, anon_sessions=0, service_sessions=0, seconds=1)
    report.problems = 1
    report.leaks.append("user a read event 1 of b")
    text = rls_audit.render(tap, report, server_version="15")
    assert "| 2 | user A | delete B's events | refused (42501) | **FAILED** |" in text
    assert "user a read event 1 of b" in text
    assert "FAIL: see the rows marked above." in text
