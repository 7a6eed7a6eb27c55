"""Runs every pgTAP file of supabase/tests/ (what `supabase test db` runs) on a fresh database."""

from __future__ import annotations

from pathlib import Path

import pytest

from localdb import pgtap
from localdb.cluster import ROOT
from tests.conftest import Database

PGTAP_FILES = sorted((ROOT / "supabase" / "tests").glob("*.sql"))


def test_there_are_pgtap_files() -> None:
    assert {p.name for p in PGTAP_FILES} >= {
        "engagement_events_schema.test.sql",
        "engagement_events_rls.test.sql",
        "engagement_events_indexes.test.sql",
    }


@pytest.mark.parametrize("path", PGTAP_FILES, ids=lambda p: p.name)
def test_pgtap_file(db: Database, path: Path) -> None:
    run = pgtap.run_file(db.cluster, db.name, path)
    assert run.passed, run.summary()
    assert run.planned is not None
    assert run.planned > 0


def test_parser_reports_failures_and_short_runs() -> None:
    output = "1..3\nok 1 - first\nnot ok 2 - second\n# Failed test 2\n#   have: 1\n"
    run = pgtap.parse(Path("x.sql"), output)
    assert not run.passed
    assert [a.description for a in run.failures] == ["second"]
    assert run.failures[0].diagnostics == ("# Failed test 2", "#   have: 1")
    assert run.planned == 3
    assert len(run.assertions) == 2
