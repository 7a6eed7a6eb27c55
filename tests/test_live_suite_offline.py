"""What can be proven about the live suite (tests/live) without a Supabase project.

- Without credentials every live test is skipped, and the reason names exactly the missing
  variables; nothing passes.
- Pointed at a project that cannot be reached, the suite fails (it never passes by default),
  still writes its report, and the report names the host but no key.
- scripts/live-check.sh refuses to start without the variables, saying which are missing.
- The report's arithmetic and redaction, and the reading of PostgREST answers, on known inputs.

None of this stands in for a live run: docs/live-checks.md says how to make one.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import jwt
import pytest

from tests.live.api import Answer
from tests.live.conftest import REQUIRED_VARIABLES, key_kind, missing_variables
from tests.live.report import Latency as LatencyFigure
from tests.live.report import LiveReport, latency_verdict, percentile
from tests.live.test_realtime import Inbox, Run, Subscription, latency_figures

ROOT = Path(__file__).resolve().parents[1]
FAKE_SERVICE_KEY = "sb_secret_offline-test-service-key-0123456789"
FAKE_ANON_KEY = "sb_publishable_offline-test-anon-key-0123456789"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Supabase or live-suite variable."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SUPABASE_", "LIVE_", "PYTEST_")) and k != "DATABASE_URL"
    }
    env.update(extra)
    return env


def run_live_suite(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """pytest on tests/live in a fresh process; plugins the live suite never uses stay off so
    that the run costs little more than the interpreter's start."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/live",
            "-rs",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:schemathesis",
            "-p",
            "no:hypothesispytest",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, list(REQUIRED_VARIABLES)),
        (
            {"SUPABASE_URL": "https://staging-ref.supabase.co", "SUPABASE_ANON_KEY": "  "},
            ["SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_ANON_KEY"],
        ),
    ],
)
def test_without_credentials_every_live_test_is_skipped_naming_what_is_missing(
    given: dict[str, str], missing: list[str], tmp_path: Path
) -> None:
    report = tmp_path / "report.md"
    result = run_live_suite(clean_env(LIVE_REPORT=str(report), **given))
    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    summary = output.strip().splitlines()[-1]
    assert "skipped" in summary
    assert "passed" not in summary
    assert "failed" not in summary
    assert "error" not in summary
    skip_lines = [line for line in output.splitlines() if line.startswith("SKIPPED")]
    assert {line.split()[2].split(":")[0] for line in skip_lines} >= {
        "tests/live/test_rest_rls.py",
        "tests/live/test_graphql.py",
        "tests/live/test_realtime.py",
        "tests/live/test_functions.py",
    }
    for line in skip_lines:
        reason = line.split(": ", 1)[1]
        named = [name for name in REQUIRED_VARIABLES if name in reason.split(" not set")[0]]
        assert named == missing, line
        assert "docs/live-checks.md" in reason
    assert not report.exists(), "a skipped run must not leave a report that looks like a run"


def test_an_unreachable_project_fails_and_the_report_says_so_without_keys(
    tmp_path: Path,
) -> None:
    report = tmp_path / "report.md"
    jwt_secret = "offline-test-jwt-secret-with-more-than-32-characters"
    env = clean_env(
        SUPABASE_URL="http://127.0.0.1:9",  # discard port: nothing listens there
        SUPABASE_SERVICE_ROLE_KEY=FAKE_SERVICE_KEY,
        SUPABASE_ANON_KEY=FAKE_ANON_KEY,
        SUPABASE_JWT_SECRET=jwt_secret,
        LIVE_REPORT=str(report),
    )
    result = run_live_suite(env, "-x")
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode != 0, result.stdout
    assert "passed" not in summary
    assert "error" in summary or "failed" in summary
    text = report.read_text(encoding="utf-8")
    assert "project: `127.0.0.1`" in text
    assert "create user A" in text
    assert "**NOT as required**" in text
    assert "FAIL: at least one check did not behave as required." in text
    assert "(setup) | failed | supabase_auth.errors.AuthRetryableError" in text
    for secret in (FAKE_SERVICE_KEY, FAKE_ANON_KEY, jwt_secret):
        assert secret not in text
        assert secret not in result.stdout + result.stderr


def test_live_check_script_refuses_without_the_variables() -> None:
    result = subprocess.run(
        ["bash", "scripts/live-check.sh"],
        cwd=ROOT,
        env=clean_env(SUPABASE_ANON_KEY=FAKE_ANON_KEY),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "not run: SUPABASE_URL SUPABASE_SERVICE_ROLE_KEY not set" in result.stderr
    assert "never production" in result.stderr
    assert "==> live checks" not in result.stdout  # refused before setup or pytest ran


def test_live_check_script_refuses_a_plain_http_remote_url() -> None:
    result = subprocess.run(
        ["bash", "scripts/live-check.sh"],
        cwd=ROOT,
        env=clean_env(
            SUPABASE_URL="http://staging-ref.supabase.co",
            SUPABASE_SERVICE_ROLE_KEY=FAKE_SERVICE_KEY,
            SUPABASE_ANON_KEY=FAKE_ANON_KEY,
        ),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "must be the project's https:// URL" in result.stderr


def test_missing_variables_treats_blank_as_missing() -> None:
    assert missing_variables({"SUPABASE_URL": "https://x.supabase.co"}) == [
        "SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_ANON_KEY",
    ]
    full = dict.fromkeys(REQUIRED_VARIABLES, "set")
    assert missing_variables(full) == []
    assert missing_variables({**full, "SUPABASE_ANON_KEY": " "}) == ["SUPABASE_ANON_KEY"]


def test_percentile_is_nearest_rank_and_never_invents_a_value() -> None:
    samples = [float(n) for n in range(1, 101)]  # 1..100 ms
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([120.0, 80.0, 400.0], 50) == 120.0
    assert percentile([120.0, 80.0, 400.0], 99) == 400.0
    assert percentile([], 50) is None


def test_latency_verdict_against_the_500_ms_target() -> None:
    fast = LatencyFigure("fast", tuple([100.0] * 99 + [480.0]), "m")
    slow = LatencyFigure("slow", tuple([100.0] * 98 + [700.0, 900.0]), "m")
    lossy = LatencyFigure("lossy", (100.0, 120.0), "m", lost=1)
    assert latency_verdict(fast) == "within target"
    assert latency_verdict(slow) == "over target"
    assert latency_verdict(lossy) == "over target (1 never delivered)"
    assert latency_verdict(LatencyFigure("none", (), "m")) == "no samples"


def test_report_names_the_host_and_scrubs_every_known_secret() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.payload-of-a-user-token.signature"
    report = LiveReport(project_url="https://abcdefghij.supabase.co/")
    report.add_secret(FAKE_SERVICE_KEY)
    report.add_secret(token)
    report.record(
        "REST",
        "user A",
        "select all events",
        expected="own rows",
        ok=True,
        observed=f"200, 2 row(s) with Bearer {token}",
    )
    report.record(
        "REST",
        "user A",
        "insert an event for B",
        expected="refused",
        ok=False,
        observed="201",
        codes=["PGRST301"],
    )
    report.record("GraphQL", "user A", "query", expected="own", ok=None, observed="not enabled")
    report.add_latency(LatencyFigure("insert sent -> delivered", (90.0, 110.0, 640.0), "bound"))
    text = report.render()
    assert "project: `abcdefghij.supabase.co`" in text
    assert "https://" not in text.split("## ")[0].split("project:")[1].splitlines()[0]
    assert token not in text
    assert FAKE_SERVICE_KEY not in text
    assert "Bearer [redacted]" in text
    assert (
        "| 2 | user A | insert an event for B | refused | **NOT as required** | 201 | PGRST301 |"
        in text
    )
    assert "| 1 | user A | query | own | skipped | not enabled | - |" in text
    assert "| insert sent -> delivered | 3 | 0 | 110 | 640 | 640 | over target |" in text
    assert "3 check(s): 1 passed, 1 failed, 1 skipped" in text
    assert text.rstrip().endswith("FAIL: at least one check did not behave as required.")


def test_answers_are_read_as_postgrest_documents_them() -> None:
    denied = Answer(
        403,
        {
            "code": "42501",
            "message": 'new row violates row-level security policy for table "engagement_events"',
            "details": None,
            "hint": None,
        },
    )
    assert denied.refused()
    assert denied.code == "42501"
    assert denied.describe().startswith("403 42501: new row violates")
    expired = Answer(401, {"code": "PGRST303", "message": "JWT expired"})
    assert not expired.refused(), "an expired token is not an RLS refusal"
    empty = Answer(200, [])
    assert not empty.refused()
    assert empty.describe() == "200, 0 row(s)"
    rows = Answer(200, [{"id": "x", "user_id": "a"}, {"id": "y", "user_id": "a"}])
    assert rows.ids() == {"x", "y"}


def test_key_kind_names_the_kind_never_the_key() -> None:
    anon_jwt = jwt.encode({"role": "anon"}, "k" * 32, algorithm="HS256")
    assert key_kind(anon_jwt) == "legacy JWT key (HS256, role anon)"
    assert key_kind(FAKE_SERVICE_KEY) == "secret key (sb_secret_...)"
    assert key_kind(FAKE_ANON_KEY) == "publishable key (sb_publishable_...)"
    assert key_kind("nonsense") == "not a recognised Supabase key"


def test_a_test_that_failed_before_recording_a_check_fails_the_verdict() -> None:
    report = LiveReport(project_url="https://abcdefghij.supabase.co")
    assert report.verdict() == "INCOMPLETE: nothing was checked."
    report.record("REST", "user A", "select", expected="own rows", ok=True, observed="200")
    assert report.verdict().startswith("PASS")
    report.test_outcome(
        "tests/live/test_rest_rls.py::test_insert_own_rows_only",
        "failed",
        "AssertionError: service_role could not seed rows: 403 42501",
    )
    text = report.render()
    assert "| tests/live/test_rest_rls.py::test_insert_own_rows_only | failed |" in text
    assert text.rstrip().endswith("FAIL: at least one check did not behave as required.")


def test_realtime_inbox_reads_deliveries_and_survives_odd_ones() -> None:
    async def scenario() -> tuple[Inbox, bool, float]:
        inbox = Inbox("A, filtered")
        arrived = inbox.waiting.setdefault("row-1", asyncio.Event())
        sent = asyncio.get_running_loop().time() - 0.120  # the insert went out 120 ms ago
        inbox.receive(
            {
                "ids": [7],
                "data": {
                    "schema": "public",
                    "table": "engagement_events",
                    "type": "INSERT",
                    "commit_timestamp": "2026-11-26T12:00:00.100Z",
                    "errors": None,
                    "columns": [],
                    "record": {"id": "row-1", "user_id": "user-a"},
                },
            }
        )
        inbox.receive({"ids": [7], "data": {"record": "not an object"}})
        return inbox, arrived.is_set(), sent

    inbox, woke, sent = asyncio.run(scenario())
    assert woke, "the insert loop waiting for row-1 must be woken"
    assert inbox.got["row-1"].user_id == "user-a"
    assert inbox.got["row-1"].commit == "2026-11-26T12:00:00.100Z"
    assert inbox.errors == [
        "unreadable delivery: AttributeError: 'str' object has no attribute 'get'"
    ]

    run = Run(
        subscriptions={"A, filtered": Subscription(inbox, None, ["SUBSCRIBED"], ready=True)},
        a_rows=["row-1", "row-2"],  # row-2 never arrived
        b_rows=[],
        sent_at={"row-1": sent, "row-2": sent},
        answered_at={"row-1": sent + 0.100, "row-2": sent + 0.100},
        insert_failures=[],
    )
    from_send, from_answer, from_commit = latency_figures(run)
    assert from_send.lost == 1
    assert len(from_send.samples_ms) == 1
    assert 120.0 <= from_send.samples_ms[0] < 1000.0
    assert from_answer.samples_ms[0] == pytest.approx(from_send.samples_ms[0] - 100.0)
    assert len(from_commit.samples_ms) == 1
    assert latency_verdict(from_send) == "over target (1 never delivered)"
