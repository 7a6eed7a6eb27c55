"""What can be proven about the live suite (tests/live) without a Supabase project.

- Without credentials every live test is skipped, and the reason names exactly the missing
  variables; nothing passes.
- Pointed at a project that cannot be reached, the suite fails (it never passes by default),
  still writes its report, and the report names the host but no key.
- scripts/live-check.sh refuses to start without the variables, saying which are missing.
- The report's arithmetic and redaction, and the reading of PostgREST answers, on known inputs.
- The Realtime half against a loopback stand-in of the Phoenix channel protocol: what the
  suite sends when it joins, that deliveries are parsed and timed, and that a leaked row of
  another user fails the check.
- The verify_service_jwt and convert_timestamps checks, unchanged, against the real functions
  with a secret key and HS256 tokens minted here.
- The REST checks, unchanged, against an in-memory model of the table's rules: they pass as
  designed and fail when one rule is broken.

None of this stands in for a live run: docs/live-checks.md says how to make one.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import jwt
import pytest

from tests.live import (
    test_functions as live_functions,
)  # a module: its tests are not collected here
from tests.live import test_rest_rls as live_rest  # a module: its tests are not collected here
from tests.live.api import Answer, Caller, DataApi, caller_with_key, caller_with_token
from tests.live.conftest import (
    REQUIRED_VARIABLES,
    LiveEnv,
    LiveUser,
    LiveUsers,
    key_kind,
    missing_variables,
)
from tests.live.report import Latency as LatencyFigure
from tests.live.report import LiveReport, latency_verdict, percentile
from tests.live.test_functions import make_function_app, release_function_state, service_credentials
from tests.live.test_graphql import nodes, unavailable_reason
from tests.live.test_realtime import (
    Inbox,
    Run,
    Subscription,
    latency_figures,
    record_realtime_checks,
    run_realtime,
)

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
        LIVE_CHECKS="1",
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


def test_credentials_alone_do_not_run_the_live_suite(tmp_path: Path) -> None:
    """scripts/test.sh with a project's keys exported must not touch that project."""
    report = tmp_path / "report.md"
    env = clean_env(
        SUPABASE_URL="http://127.0.0.1:9",
        SUPABASE_SERVICE_ROLE_KEY=FAKE_SERVICE_KEY,
        SUPABASE_ANON_KEY=FAKE_ANON_KEY,
        LIVE_REPORT=str(report),
    )
    result = run_live_suite(env)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "skipped" in summary
    assert "failed" not in summary
    assert "passed" not in summary
    assert "scripts/live-check.sh (LIVE_CHECKS=1)" in result.stdout
    assert not report.exists()


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


# -- The Realtime half of the live suite against a loopback stand-in ----------------------------
#
# The stand-in speaks the Phoenix channel protocol the way Supabase Realtime documents it (join
# reply with the server's postgres_changes bindings, the "Subscribed to PostgreSQL" system
# message, postgres_changes pushes carrying `ids` and `data.record`), and takes the Data API's
# insert. It decides delivery by the subscriber's JWT `sub`, or leaks B's rows on purpose. It
# proves the suite's client code and its judging, never anything about Supabase.

ANA = "a1a1a1a1-0000-4000-8000-00000000000a"
BEN = "b2b2b2b2-0000-4000-8000-00000000000b"


@dataclass
class _Subscriber:
    ws: Any
    topic: str
    user: str | None
    bindings: list[dict[str, Any]]


class RealtimeStandIn:
    """Realtime (websocket) and the table's insert endpoint (HTTP) on two loopback ports."""

    def __init__(self, *, leak_to_unfiltered: bool) -> None:
        self.leak = leak_to_unfiltered
        self.joins: list[tuple[str, dict[str, Any]]] = []
        self.inserts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self._subscribers: list[_Subscriber] = []
        self._next_id = 1000
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._http: ThreadingHTTPServer | None = None
        self._server: Any = None
        self.ws_port = self.http_port = 0

    def __enter__(self) -> RealtimeStandIn:
        self._thread.start()
        self.ws_port = asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._http_handler())
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _serve(self) -> int:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handle, "127.0.0.1", 0)
        return int(next(iter(self._server.sockets)).getsockname()[1])

    async def _close(self) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, ws: Any) -> None:
        async for raw in ws:
            message = json.loads(raw)
            topic, kind, ref = message["topic"], message["event"], message.get("ref")
            if kind == "phx_join":
                payload = message["payload"]
                self.joins.append((topic, payload))
                bindings = []
                for binding in payload["config"]["postgres_changes"]:
                    self._next_id += 1
                    bindings.append({**binding, "id": self._next_id})
                token = payload.get("access_token") or ""
                user = None
                if token.count(".") == 2:
                    user = jwt.decode(token, options={"verify_signature": False}).get("sub")
                self._subscribers.append(_Subscriber(ws, topic, user, bindings))
                await ws.send(json.dumps(_reply(topic, ref, {"postgres_changes": bindings})))
                await ws.send(
                    json.dumps(
                        {
                            "event": "system",
                            "topic": topic,
                            "ref": None,
                            "payload": {
                                "channel": topic.removeprefix("realtime:"),
                                "extension": "postgres_changes",
                                "message": "Subscribed to PostgreSQL",
                                "status": "ok",
                            },
                        }
                    )
                )
            elif kind in ("heartbeat", "phx_leave", "access_token"):
                await ws.send(json.dumps(_reply(topic, ref, {})))

    async def publish(self, row: dict[str, Any]) -> None:
        for sub in self._subscribers:
            for binding in sub.bindings:
                wanted = binding.get("filter")
                allowed = sub.user is not None and row["user_id"] == sub.user
                if wanted is not None:
                    allowed = allowed and wanted == f"user_id=eq.{row['user_id']}"
                elif self.leak and sub.user is not None:
                    allowed = True
                if not allowed:
                    continue
                change: dict[str, Any] = {
                    "schema": "public",
                    "table": "engagement_events",
                    "commit_timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                    "type": "INSERT",
                    "errors": None,
                    "columns": [],
                    "record": row,
                }
                await sub.ws.send(
                    json.dumps(
                        {
                            "event": "postgres_changes",
                            "topic": sub.topic,
                            "ref": None,
                            "payload": {"ids": [binding["id"]], "data": change},
                        }
                    )
                )

    def _http_handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                rows = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                for row in rows:
                    standin.inserts.append((dict(self.headers), row))
                    asyncio.run_coroutine_threadsafe(standin.publish(row), standin._loop).result(5)
                self.send_response(201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _reply(topic: str, ref: str | None, response: dict[str, Any]) -> dict[str, Any]:
    return {
        "event": "phx_reply",
        "topic": topic,
        "ref": ref,
        "payload": {"status": "ok", "response": response},
    }


def _standin_run(standin: RealtimeStandIn, inserts: int) -> tuple[LiveUsers, Run]:
    secret = "standin-secret-with-more-than-thirty-two-characters"
    tokens = {
        uid: jwt.encode({"sub": uid, "role": "authenticated"}, secret, algorithm="HS256")
        for uid in (ANA, BEN)
    }
    users = LiveUsers(
        *(
            LiveUser(
                name,
                uid,
                f"{name}@example.com",
                tokens[uid],
                caller_with_token(name, FAKE_ANON_KEY, tokens[uid], uid),
            )
            for name, uid in (("user A", ANA), ("user B", BEN))
        )
    )
    env = LiveEnv(
        url=f"http://127.0.0.1:{standin.http_port}",
        service_key=FAKE_SERVICE_KEY,
        anon_key=FAKE_ANON_KEY,
        jwt_secret=None,
        email_domain="example.com",
        report_path=Path("unused.md"),
        run_id="standin",
    )
    run = asyncio.run(
        run_realtime(
            env,
            users,
            caller_with_key("service_role", FAKE_SERVICE_KEY),
            inserts,
            "standin",
            realtime_url=f"ws://127.0.0.1:{standin.ws_port}/realtime/v1",
            grace_s=0.3,
        )
    )
    return users, run


def test_realtime_client_code_subscribes_as_documented_and_times_deliveries() -> None:
    with RealtimeStandIn(leak_to_unfiltered=False) as standin:
        users, run = _standin_run(standin, inserts=10)
    joins = dict(standin.joins)
    filtered = joins["realtime:live-standin-a-filtered"]
    assert filtered["access_token"] == users.a.access_token
    assert filtered["config"]["postgres_changes"] == [
        {
            "event": "INSERT",
            "schema": "public",
            "table": "engagement_events",
            "filter": f"user_id=eq.{ANA}",
        }
    ]
    assert "filter" not in joins["realtime:live-standin-a-all"]["config"]["postgres_changes"][0]
    assert joins["realtime:live-standin-anon-all"]["access_token"] == FAKE_ANON_KEY
    assert [row["user_id"] for _, row in standin.inserts].count(ANA) == 10
    assert [row["user_id"] for _, row in standin.inserts].count(BEN) == 2
    assert all(headers["apikey"] == FAKE_SERVICE_KEY for headers, _ in standin.inserts)

    report = LiveReport(project_url="http://127.0.0.1")
    record_realtime_checks(run, users, 10, report).assert_all()
    assert [(f.name, len(f.samples_ms), f.lost) for f in report.latencies] == [
        ("insert sent -> delivered", 10, 0),
        ("insert answered -> delivered", 10, 0),
        ("commit_timestamp -> delivered", 10, 0),
    ]


def test_realtime_check_fails_when_another_users_row_reaches_the_subscriber() -> None:
    with RealtimeStandIn(leak_to_unfiltered=True) as standin:
        users, run = _standin_run(standin, inserts=10)
    report = LiveReport(project_url="http://127.0.0.1")
    checks = record_realtime_checks(run, users, 10, report)
    with pytest.raises(AssertionError, match=r"receive inserts \(A, unfiltered\)"):
        checks.assert_all()
    leaked = [c for c in report.checks if c.outcome == "fail"]
    assert [c.what for c in leaked] == ["receive inserts (A, unfiltered)"]
    assert "2 of B's 2, 2 not A's in total" in leaked[0].observed


def test_graphql_availability_is_read_from_the_endpoints_answer() -> None:
    disabled = {"errors": [{"message": "pg_graphql extension is not enabled."}]}
    assert unavailable_reason(200, disabled) == (
        "pg_graphql is not enabled on this project (the endpoint says so)"
    )
    missing = {
        "code": "PGRST202",
        "message": "Could not find the function graphql_public.graphql without parameters",
    }
    assert (reason := unavailable_reason(404, missing)) is not None
    assert reason.startswith("/graphql/v1 is not served (404 PGRST202")
    unknown = {"data": None, "errors": [{"message": 'Unknown field "engagementEventsCollection"'}]}
    assert unavailable_reason(200, unknown) is None  # enabled: the other naming is tried next
    assert nodes(unknown, "engagementEventsCollection") is None
    found = {
        "data": {
            "engagement_eventsCollection": {
                "edges": [
                    {"node": {"id": "x", "user_id": ANA}},
                    {"node": {"id": "y", "user_id": ANA}},
                ]
            }
        }
    }
    assert nodes(found, "engagement_eventsCollection") == [
        {"id": "x", "user_id": ANA},
        {"id": "y", "user_id": ANA},
    ]


# -- The function checks against the real functions, with credentials minted here -------------
#
# convert_timestamps and verify_service_jwt need no project when every credential is an
# sb_secret_ key or an HS256 token: the live checks' wiring (environment, which credential is
# used, which answer each caller must get) runs here unchanged against the package's real
# handlers. What this cannot show is how the project's own keys and tokens fare.

LOCAL_JWT_SECRET = "offline-live-suite-jwt-secret-of-forty-characters"


def _local_project(service_key: str, jwt_secret: str | None) -> tuple[LiveEnv, LiveUsers]:
    env = LiveEnv(
        url="http://127.0.0.1:9",  # JWKS would be fetched from here; HS256 never needs it
        service_key=service_key,
        anon_key=FAKE_ANON_KEY,
        jwt_secret=jwt_secret,
        email_domain="example.com",
        report_path=Path("unused.md"),
        run_id="offline",
    )
    now = int(time.time())
    members = []
    for name, uid in (("user A", ANA), ("user B", BEN)):
        token = jwt.encode(
            {"sub": uid, "role": "authenticated", "iat": now, "exp": now + 600},
            LOCAL_JWT_SECRET,
            algorithm="HS256",
        )
        members.append(
            LiveUser(
                name,
                uid,
                f"{uid}@example.com",
                token,
                caller_with_token(name, FAKE_ANON_KEY, token, uid),
            )
        )
    return env, LiveUsers(*members)


def test_function_checks_hold_against_the_real_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    env, users = _local_project(FAKE_SERVICE_KEY, LOCAL_JWT_SECRET)
    report = LiveReport(project_url=env.url)
    credentials = service_credentials(env, report)
    assert [c.key_type for c in credentials] == ["secret_key", "legacy_jwt"]
    factory = make_function_app(env, monkeypatch)
    try:
        live_functions.test_verify_service_jwt_with_the_projects_keys(factory, env, users, report)
        live_functions.test_convert_timestamps_with_the_projects_credential(
            factory, credentials[0], users, report
        )
    finally:
        release_function_state()
    observed = {(c.what, c.observed.split(" ")[0]) for c in report.checks}
    assert ("verify the project's secret key (Authorization header)", "200") in observed
    assert ("verify an HS256 token minted with the JWT secret (Authorization header)", "200") in (
        observed
    )
    assert ("verify user A's access token", "403") in observed
    assert ("verify the anon key", "403") in observed
    assert ("verify the project's secret key with its last characters changed", "401") in observed
    assert all(c.outcome == "pass" for c in report.checks), report.render()


def test_without_the_jwt_secret_user_tokens_must_get_not_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env, users = _local_project(FAKE_SERVICE_KEY, None)
    report = LiveReport(project_url=env.url)
    factory = make_function_app(env, monkeypatch)
    try:
        live_functions.test_verify_service_jwt_with_the_projects_keys(factory, env, users, report)
    finally:
        release_function_state()
    by_what = {c.what: c for c in report.checks}
    assert by_what["verify user A's access token"].observed.startswith("401 not_configured")
    assert all(c.outcome == "pass" for c in report.checks), report.render()


def test_which_service_credentials_the_functions_can_verify() -> None:
    report = LiveReport(project_url="https://x.supabase.co")
    legacy = jwt.encode({"role": "service_role"}, LOCAL_JWT_SECRET, algorithm="HS256")
    with_secret, _ = _local_project(legacy, LOCAL_JWT_SECRET)
    without_secret, _ = _local_project(legacy, None)
    secret_key, _ = _local_project(FAKE_SERVICE_KEY, None)
    assert [(c.token == legacy, c.key_type) for c in service_credentials(with_secret, report)] == [
        (True, "legacy_jwt"),
        (False, "legacy_jwt"),
    ]
    assert service_credentials(without_secret, report) == []
    assert [c.key_type for c in service_credentials(secret_key, report)] == ["secret_key"]


# -- The REST checks against a model of the table's rules ----------------------------------------
#
# A small in-memory model answers the Data API calls the REST checks make with PostgREST's
# documented shapes, following the migration's rules (own rows only, one-way soft delete,
# column grants, no delete for users, nothing for anon). Run as designed, every REST check
# passes; with one rule broken on purpose, the check that guards it fails. It proves the
# judging, not the project: the project's own answers come only from a live run.


class TableModel:
    """engagement_events behind a pretend Data API, optionally with one rule broken."""

    def __init__(self, service_key: str, broken: str | None = None) -> None:
        self.service_key = service_key
        self.broken = broken
        self.rows: dict[str, dict[str, Any]] = {}

    def _role(self, who: Caller) -> str:
        if who.headers.get("Authorization") == f"Bearer {self.service_key}":
            return "service_role"
        return "authenticated" if who.user_id else "anon"

    @staticmethod
    def _denied(status: int) -> Answer:
        return Answer(status, {"code": "42501", "message": "permission denied", "hint": None})

    def _match(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        found = []
        for row in self.rows.values():
            ok = True
            for column, condition in filters.items():
                if column == "select":
                    continue
                op, _, value = condition.partition(".")
                wanted = value.strip("()").split(",") if op == "in" else [value]
                ok = ok and str(row.get(column)) in wanted
            if ok:
                found.append(row)
        return found

    def _visible(self, who: Caller, filters: dict[str, str]) -> list[dict[str, Any]]:
        rows = self._match(filters)
        if self._role(who) == "service_role" or self.broken == "select":
            return rows
        return [r for r in rows if r["user_id"] == who.user_id]

    def select(self, who: Caller, **filters: str) -> Answer:
        if self._role(who) == "anon":
            return self._denied(401)
        return Answer(200, [dict(r) for r in self._visible(who, filters)])

    def insert(self, who: Caller, rows: list[dict[str, Any]]) -> Answer:
        role = self._role(who)
        if role == "anon":
            return self._denied(401)
        if role == "authenticated" and any(
            r["user_id"] != who.user_id or "is_deleted" in r for r in rows
        ):
            return self._denied(403)
        for r in rows:
            self.rows[r["id"]] = {"is_deleted": False, **r}
        return Answer(201, None)

    def update(self, who: Caller, patch: dict[str, Any], **filters: str) -> Answer:
        role = self._role(who)
        if role == "anon":
            return self._denied(401)
        targets = self._visible(who, filters)
        if role == "authenticated":
            if set(patch) - {"is_deleted"} or patch.get("is_deleted") is not True:
                return self._denied(403)
            if self.broken == "soft_delete_others":
                targets = self._match(filters)
        for r in targets:
            r.update(patch)
        return Answer(200, [dict(r) for r in targets])

    def delete(self, who: Caller, **filters: str) -> Answer:
        role = self._role(who)
        if role != "service_role":
            return self._denied(401 if role == "anon" else 403)
        gone = self._match(filters)
        for r in gone:
            del self.rows[r["id"]]
        return Answer(200, gone)


def _rest_checks(broken: str | None) -> tuple[LiveReport, list[str]]:
    model = TableModel(FAKE_SERVICE_KEY, broken)
    api = cast(DataApi, model)
    _, users = _local_project(FAKE_SERVICE_KEY, None)
    anon = caller_with_key("anon", FAKE_ANON_KEY)
    service = caller_with_key("service_role", FAKE_SERVICE_KEY)
    report = LiveReport(project_url="https://model.invalid")
    failed = []
    for test in (
        live_rest.test_select_each_role_sees_only_its_own_rows,
        live_rest.test_insert_own_rows_only,
        live_rest.test_update_is_a_one_way_soft_delete_of_own_rows,
        live_rest.test_only_service_role_deletes,
    ):
        try:
            test(api, users, anon, service, report)
        except AssertionError:
            failed.append(test.__name__)
    return report, failed


def test_rest_checks_pass_when_the_rules_hold() -> None:
    report, failed = _rest_checks(broken=None)
    assert failed == []
    assert len(report.checks) >= 20
    assert all(c.outcome == "pass" for c in report.checks), report.render()
    refusals = [c for c in report.checks if c.codes == ("42501",)]
    assert {c.who for c in refusals} == {"user A", "anon"}


@pytest.mark.parametrize(
    ("broken", "failing_test", "failing_check"),
    [
        ("select", "test_select_each_role_sees_only_its_own_rows", "select all events"),
        (
            "soft_delete_others",
            "test_update_is_a_one_way_soft_delete_of_own_rows",
            "soft-delete B's event",
        ),
    ],
)
def test_rest_checks_fail_when_a_user_reaches_another_users_rows(
    broken: str, failing_test: str, failing_check: str
) -> None:
    report, failed = _rest_checks(broken=broken)
    assert failing_test in failed
    assert failing_check in {c.what for c in report.failed}
    assert report.verdict().startswith("FAIL")


def test_information_is_rendered_but_never_decides_the_verdict() -> None:
    report = LiveReport(project_url="https://abcdefghij.supabase.co")
    report.record("Functions", "service_role", "import", expected="200", ok=True, observed="200")
    report.inform(
        "Functions",
        "service_role",
        "erase the unknown user's dead-lettered event",
        observed="404 PGRST202: Could not find the function",
        codes=["PGRST202"],
    )
    text = report.render()
    assert (
        "| 2 | service_role | erase the unknown user's dead-lettered event | - | recorded |" in text
    )
    assert "1 recorded for information" in text
    assert report.verdict().startswith("PASS")
