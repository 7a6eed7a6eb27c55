"""Monitoring: the Cloud Monitoring definitions in monitoring/ parse and read only what the
functions log; the SQL views of migration 20241211 give the right figures on the local database
and are closed to the API's user roles; scripts/apply-monitoring.sh sends the gcloud commands it
should, once per resource, and can run again."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import yaml
from flask.testing import FlaskClient

from functions import log
from localdb import cluster as localcluster
from localdb.api_roles import request_as
from localdb.cluster import ROOT
from tests.conftest import AppFactory, Database

MONITORING = ROOT / "monitoring"
SCRIPT = ROOT / "scripts" / "apply-monitoring.sh"
MIGRATION = localcluster.MIGRATIONS / "20241211000000_monitoring.sql"
DOWN = ROOT / "supabase" / "rollback" / "20241211000000_monitoring.down.sql"
SECRET = "monitoring-test-jwt-secret-with-at-least-32-characters"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"
BEN = "b2b2b2b2-0000-4000-8000-000000000002"
PROJECT = "engagement-prod-1"

METRIC_FILES = sorted((MONITORING / "log-metrics").glob("*.yaml"))
POLICY_FILES = sorted((MONITORING / "alert-policies").glob("*.json"))
DASHBOARD_FILES = sorted((MONITORING / "dashboards").glob("*.json"))


def metrics() -> dict[str, dict[str, Any]]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in METRIC_FILES}


# -------------------------------------------------------------------------- the log lines


def token(role: str = "service_role") -> str:
    now = int(time.time())
    return jwt.encode({"role": role, "iat": now, "exp": now + 600}, SECRET, algorithm="HS256")


@pytest.fixture
def logged_requests(db: Database, function_app: AppFactory) -> Iterator[list[dict[str, Any]]]:
    """Requests of every outcome through the three functions; yields the JSON log lines."""
    env = {"SUPABASE_JWT_SECRET": SECRET, "DATABASE_URL": db.url, "SUPABASE_URL": None}
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log.CloudLoggingFormatter())
    package_logger = logging.getLogger("functions")
    package_logger.addHandler(handler)
    previous_level = package_logger.level
    package_logger.setLevel(logging.INFO)

    def client(target: str) -> FlaskClient:
        return function_app(target, **env).test_client()

    service = {"Authorization": f"Bearer {token()}"}
    try:
        batch = client("batch_import")
        good = {
            "user_id": ANA,
            "event_type": "app_open",
            "timestamp": "2024-12-01T08:00:00Z",
            "value": {"platform": "ios"},
        }
        bad = {
            "user_id": BEN,
            "event_type": "steps_import",
            "timestamp": "2024-12-01T08:00:00Z",
            "value": {"steps": -1},
        }
        assert batch.post("/", json=[good, bad], headers=service).status_code == 200
        assert batch.post("/", json=[bad], headers=service).status_code == 422
        assert batch.post("/", json=[good]).status_code == 401
        assert (
            batch.post(
                "/", json=[good], headers={"Authorization": f"Bearer {token('authenticated')}"}
            ).status_code
            == 403
        )
        assert batch.get("/", headers=service).status_code == 405
        convert = client("convert_timestamps")
        assert (
            convert.get(
                "/?timestamp=2024-12-01T08:00:00&timezone=Europe/Berlin", headers=service
            ).status_code
            == 200
        )
        verify = client("verify_service_jwt")
        assert verify.get("/", headers=service).status_code == 200
        yield [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)


def payload_fields(text: str) -> set[str]:
    return set(re.findall(r"jsonPayload\.([A-Za-z_]+)", text))


def test_log_metrics_read_only_fields_the_functions_log(
    logged_requests: list[dict[str, Any]],
) -> None:
    lines = [line for line in logged_requests if line.get("logger") == "functions.handlers"]
    # One line per request, with function and status; the handlers also log at cold start.
    answers = [line for line in lines if "status" in line]
    assert {(a["function"], a["status"]) for a in answers} >= {
        ("batch_import", 200),
        ("batch_import", 422),
        ("batch_import", 401),
        ("batch_import", 403),
        ("batch_import", 405),
        ("convert_timestamps", 200),
        ("verify_service_jwt", 200),
    }
    logged = set().union(*(line.keys() for line in lines))
    for name, metric in metrics().items():
        text = json.dumps(metric)
        used = payload_fields(text)
        assert used, name
        assert used <= logged, (name, used - logged)
        # The filter names the logger the answer lines come from.
        assert 'jsonPayload.logger="functions.handlers"' in metric["filter"], name
        # Every field a metric extracts is in every line its filter selects.
        selected = [
            a
            for a in lines
            if all(f in a for f in re.findall(r"jsonPayload\.(\w+):\*", metric["filter"]))
            and all(
                a.get(k) == v
                for k, v in re.findall(r'jsonPayload\.(\w+)="([^"]*)"', metric["filter"])
                if k != "logger"
            )
        ]
        assert selected, name
        extracted = payload_fields(
            json.dumps(metric.get("labelExtractors", {})) + metric.get("valueExtractor", "")
        )
        for line in selected:
            assert extracted - {"error"} <= set(line), (name, line)


def test_numbers_the_distributions_extract_are_numbers(
    logged_requests: list[dict[str, Any]],
) -> None:
    answers = [line for line in logged_requests if line.get("logger") == "functions.handlers"]
    for name, metric in metrics().items():
        if metric["metricDescriptor"]["valueType"] != "DISTRIBUTION":
            continue
        field = re.fullmatch(r"EXTRACT\(jsonPayload\.(\w+)\)", metric["valueExtractor"])
        assert field, name
        values = [a[field[1]] for a in answers if field[1] in a]
        assert values, name
        assert all(isinstance(v, int | float) and not isinstance(v, bool) for v in values), name
    batch = [a for a in answers if a.get("function") == "batch_import" and a.get("status") == 200]
    assert batch[0]["inserted"] == 1
    assert batch[0]["dead_lettered"] == 1


def test_log_lines_carry_no_token_or_payload(logged_requests: list[dict[str, Any]]) -> None:
    text = json.dumps(logged_requests)
    assert "eyJ" not in text
    assert '"steps"' not in text
    assert "platform" not in text


def test_metric_definitions_are_complete() -> None:
    assert set(metrics()) == {
        "engagement_requests",
        "engagement_latency_ms",
        "engagement_events_inserted",
        "engagement_events_dead_lettered",
    }
    for name, metric in metrics().items():
        descriptor = metric["metricDescriptor"]
        assert descriptor["metricKind"] == "DELTA", name
        assert metric["description"], name
        labels = {label["key"] for label in descriptor.get("labels", [])}
        assert labels == set(metric.get("labelExtractors", {})), name
        if descriptor["valueType"] == "DISTRIBUTION":
            assert "bucketOptions" in metric, name
            assert metric["valueExtractor"].startswith("EXTRACT(jsonPayload."), name


def referenced_metrics(text: str) -> set[str]:
    names = set(re.findall(r"logging\.googleapis\.com/user/(\w+)", text))
    names |= set(re.findall(r"logging_googleapis_com:user_(\w+?)_(?:sum|count|bucket)\b", text))
    return names


def referenced_labels(text: str) -> set[str]:
    return set(re.findall(r"metric\.labels?\.(\w+)", text))


@pytest.mark.parametrize("path", POLICY_FILES + DASHBOARD_FILES, ids=lambda p: p.name)
def test_policies_and_dashboard_chart_only_defined_metrics_and_labels(path: Path) -> None:
    definition = json.loads(path.read_text())
    assert definition["displayName"]
    text = path.read_text()
    defined = metrics()
    used = referenced_metrics(text)
    assert used, path.name
    assert used <= set(defined), used - set(defined)
    labels = {
        label["key"] for m in defined.values() for label in m["metricDescriptor"].get("labels", [])
    }
    assert referenced_labels(text) <= labels
    # PromQL reads _sum of distributions only.
    for name in re.findall(r"logging_googleapis_com:user_(\w+?)_sum", text):
        assert defined[name]["metricDescriptor"]["valueType"] == "DISTRIBUTION"


def test_alert_policies_cover_the_runbooks_alerts() -> None:
    names = {json.loads(p.read_text())["displayName"] for p in POLICY_FILES}
    assert len(names) == len(POLICY_FILES), "displayName identifies a policy: keep them unique"
    texts = [p.read_text() for p in POLICY_FILES]
    assert any('full_match(\\"5[0-9][0-9]\\")' in t and "denominatorFilter" in t for t in texts)
    assert any("REDUCE_PERCENTILE_95" in t for t in texts)
    assert any('full_match(\\"40[13]\\")' in t for t in texts)
    assert any("dead_lettered" in t for t in texts)
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for name in names:
        assert name in runbook, name


# ------------------------------------------------------------------------------ the SQL views


def sample(conn: psycopg.Connection[Any]) -> None:
    conn.execute("select monitoring.sample_engagement_stats()")


def flush_stats(conn: psycopg.Connection[Any]) -> None:
    """A backend publishes its statistics when idle, at most once a second; this makes it
    publish them as soon as this statement's transaction ends."""
    conn.execute("select pg_stat_force_next_flush()")


def failure(index: int, path: str, user: str | None = BEN) -> dict[str, Any]:
    return {
        "request_id": f"req-{uuid.uuid4().hex[:12]}",
        "credential_type": "legacy_jwt",
        "index": index,
        "event_id": None,
        "user_id": user,
        "event": json.dumps({"n": uuid.uuid4().hex}),
        "errors": [{"path": path, "message": f"{path} is wrong"}],
        "default_timezone": None,
    }


def test_migration_applies_twice_and_rolls_back_twice(db: Database) -> None:
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    with db.connect() as conn:
        sample(conn)
    db.cluster.run_sql_file(DOWN, dbname=db.name)
    db.cluster.run_sql_file(DOWN, dbname=db.name)
    with db.connect() as conn:
        assert conn.execute("select to_regnamespace('monitoring')").fetchone() == (None,)
        assert conn.execute("select count(*) from public.engagement_events").fetchone() == (5000,)
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    with db.connect() as conn:
        assert conn.execute("select count(*) from monitoring.engagement_health").fetchone() == (6,)


def test_insert_rate_and_growth_come_from_the_samples(db: Database) -> None:
    with db.connect() as conn:
        sample(conn)
        conn.execute(
            "insert into public.engagement_events (user_id, event_type, timestamp, value)"
            " select %s, 'steps_import', now() - make_interval(mins => g), jsonb_build_object('steps', g)"
            " from generate_series(1, 1500) g",
            (ANA,),
        )
        flush_stats(conn)
        sample(conn)
        rate = conn.execute(
            "select inserted, inserts_per_minute > 0, bytes_added >= 0, new_failures"
            " from monitoring.engagement_insert_rate order by sampled_at desc limit 1"
        ).fetchone()
        hourly = conn.execute(
            "select sum(inserted) from monitoring.engagement_insert_rate_hourly"
        ).fetchone()
        by_hour = conn.execute(
            "select sum(events) from monitoring.engagement_events_by_hour"
            " where event_type = 'steps_import'"
        ).fetchone()
        stats = conn.execute(
            "select live_rows, total_bytes > table_bytes, index_bytes > 0"
            " from monitoring.engagement_table_stats where relation = 'public.engagement_events'"
        ).fetchone()
    assert rate == (1500, True, True, 0)
    assert hourly == (1500,)
    assert by_hour == (1500,)
    assert stats is not None
    assert stats[1:] == (True, True)


def test_a_statistics_reset_gives_no_rate_rather_than_a_negative_one(db: Database) -> None:
    with db.connect() as conn:
        conn.execute(
            "insert into monitoring.engagement_stat_samples"
            " (sampled_at, inserted, updated, deleted, live_rows, dead_rows, total_bytes,"
            "  failures_total, failures_pending) values"
            " (now() - interval '2 minutes', 900, 0, 0, 900, 0, 1000, 0, 0),"
            " (now() - interval '1 minute', 20, 0, 0, 920, 0, 1100, 0, 0)"
        )
        rows = conn.execute(
            "select inserted, inserts_per_minute from monitoring.engagement_insert_rate"
        ).fetchall()
    assert rows == [(None, None)]


def test_dead_letter_views_count_what_batch_import_kept(db: Database) -> None:
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        with request_as(conn, "service_role"):
            conn.execute(
                "select public.record_engagement_failures(%s::jsonb)",
                (
                    json.dumps(
                        [
                            failure(0, "/timestamp"),
                            failure(1, "/timestamp"),
                            failure(2, "/value/steps", None),
                        ]
                    ),
                ),
            )
        with request_as(conn, "service_role"):
            stats = conn.execute(
                "select total, pending, replayed, new_last_hour, new_last_day, pending_users,"
                " oldest_pending_at is not null from monitoring.dead_letter_stats"
            ).fetchone()
            errors = conn.execute(
                "select path, pending_events from monitoring.dead_letter_errors order by path"
            ).fetchall()
            conn.execute(
                "update private.engagement_event_failures set replayed_at = now()"
                " where errors -> 0 ->> 'path' = '/value/steps'"
            )
            after = conn.execute(
                "select pending, replayed from monitoring.dead_letter_stats"
            ).fetchone()
    assert stats == (3, 3, 0, 3, 3, 1, True)
    assert errors == [("/timestamp", 2), ("/value/steps", 1)]
    assert after == (2, 1)


def test_health_checks_flag_a_flood_of_dead_letters_and_stale_sampling(db: Database) -> None:
    with db.connect() as conn:
        health = dict(
            conn.execute("select check_name, ok from monitoring.engagement_health").fetchall()
        )
        assert health["sampling_running"] is False  # never sampled: pg_cron is not running here
        sample(conn)
        conn.execute(
            "select public.record_engagement_failures(%s::jsonb)",
            (json.dumps([failure(i, "/event_type") for i in range(101)]),),
        )
        sample(conn)
        rows = conn.execute(
            "select check_name, value, ok from monitoring.engagement_health"
        ).fetchall()
    checks = {name: (value, ok) for name, value, ok in rows}
    assert set(checks) == {
        "sampling_running",
        "dead_rows_ratio",
        "dead_letter_new_last_hour",
        "dead_letter_oldest_pending_days",
        "replication_slot_lag_bytes",
        "insert_failure_ratio_last_hour",
    }
    assert checks["sampling_running"][1] is True
    assert checks["dead_letter_new_last_hour"] == (101, False)
    assert checks["insert_failure_ratio_last_hour"][1] is False  # 101 failed, 0 inserted
    assert checks["dead_rows_ratio"][1] is True


def test_replication_slot_lag_shows_an_unread_slot(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("select pg_create_logical_replication_slot('realtime_lag_check', 'wal2json')")
        try:
            conn.execute("set synchronous_commit = on")
            conn.execute(
                "insert into public.engagement_events (user_id, event_type, value)"
                " select %s, 'app_open', jsonb_build_object('platform', 'web') from generate_series(1, 200)",
                (ANA,),
            )
            lag = conn.execute(
                "select lag_bytes > 0, active from monitoring.replication_slot_lag"
                " where slot_name = 'realtime_lag_check'"
            ).fetchone()
        finally:
            conn.execute("select pg_drop_replication_slot('realtime_lag_check')")
    assert lag == (True, False)


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_user_roles_cannot_read_monitoring(db: Database, role: str) -> None:
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        for view in ("engagement_table_stats", "dead_letter_stats", "engagement_health"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege), request_as(conn, role, ANA):
                conn.execute(f"select * from monitoring.{view}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege), request_as(conn, role, ANA):
            conn.execute("select monitoring.sample_engagement_stats()")


def test_service_role_reads_every_view_and_samples(db: Database) -> None:
    views = [
        "engagement_table_stats",
        "engagement_index_stats",
        "engagement_insert_rate",
        "engagement_insert_rate_hourly",
        "engagement_events_by_hour",
        "dead_letter_stats",
        "dead_letter_errors",
        "replication_slot_lag",
        "engagement_health",
    ]
    with psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn:
        with request_as(conn, "service_role"):
            conn.execute("select monitoring.sample_engagement_stats()")
        with request_as(conn, "service_role"):
            found = {
                r[0]
                for r in conn.execute(
                    "select table_name from information_schema.views where table_schema = 'monitoring'"
                ).fetchall()
            }
            for view in views:
                conn.execute(f"select * from monitoring.{view}").fetchall()
            samples = conn.execute(
                "select count(*) from monitoring.engagement_stat_samples"
            ).fetchone()
    assert found == set(views)
    assert samples == (1,)


def test_monitoring_is_not_exposed_by_the_data_api() -> None:
    config = (ROOT / "supabase" / "config.toml").read_text()
    schemas = re.search(r"^schemas = \[(.*)\]$", config, re.MULTILINE)
    assert schemas
    assert "monitoring" not in schemas[1]


# -------------------------------------------------------------------- apply-monitoring.sh

FAKE_GCLOUD = r"""#!{python}
import json, os, sys

args = sys.argv[1:]
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as handle:
    handle.write(json.dumps(args) + "\n")
state_path = os.environ["FAKE_GCLOUD_STATE"]
with open(state_path) as handle:
    state = json.load(handle)
flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
words = [a for a in args if not a.startswith("-")]

def save():
    with open(state_path, "w") as handle:
        json.dump(state, handle)

if words[:2] == ["auth", "list"]:
    print(state.get("account", ""))
elif words[:3] == ["config", "get-value", "project"]:
    print(state.get("project", ""))
elif words[:2] == ["logging", "metrics"]:
    verb, name = words[2], words[3]
    if verb == "describe":
        sys.exit(0 if name in state["metrics"] else 1)
    json.load(open(flags["config-from-file"])) if flags["config-from-file"].endswith(".json") else open(flags["config-from-file"]).read()
    if verb == "create":
        if name in state["metrics"]:
            sys.exit("already exists")
        state["metrics"].append(name)
    save()
elif words[:1] == ["monitoring"]:
    kind, verb = words[1], words[2]
    known = state[kind]
    if verb == "list":
        wanted = flags["filter"].split("=", 1)[1].strip('"')
        for name, title in known.items():
            if title == wanted:
                print(name)
        sys.exit(0)
    source = flags.get("policy-from-file") or flags.get("config-from-file")
    title = json.load(open(source))["displayName"]
    if verb == "create":
        name = f"projects/{flags['project']}/{kind}/{len(known) + 1}"
        known[name] = title
    elif verb == "update":
        assert words[3] in known, words[3]
    save()
else:
    sys.exit(f"unexpected gcloud call: {args}")
"""


@pytest.fixture
def fake_gcloud(tmp_path: Path) -> dict[str, Any]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    gcloud = bindir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
    gcloud.chmod(gcloud.stat().st_mode | stat.S_IXUSR)
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {
                "account": "ops@example.com",
                "project": PROJECT,
                "metrics": [],
                "policies": {},
                "dashboards": {},
            }
        )
    )
    log_file = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bindir}:{os.environ['PATH']}",
        "FAKE_GCLOUD_STATE": str(state),
        "FAKE_GCLOUD_LOG": str(log_file),
    }
    env.pop("GOOGLE_CLOUD_PROJECT", None)
    return {"env": env, "state": state, "log": log_file}


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def calls(fake: dict[str, Any]) -> list[list[str]]:
    if not fake["log"].exists():
        return []
    return [json.loads(line) for line in fake["log"].read_text().splitlines()]


def _shellcheck() -> str:
    """shellcheck beside this interpreter (requirements-test.txt installs it), else on PATH."""
    beside = Path(sys.executable).parent / "shellcheck"
    found = str(beside) if beside.exists() else shutil.which("shellcheck")
    assert found, "shellcheck is not installed (requirements-test.txt provides it)"
    return found


def test_shellcheck_reports_nothing() -> None:
    run = subprocess.run(
        [_shellcheck(), str(SCRIPT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout


def test_dry_run_prints_every_command_and_runs_none(fake_gcloud: dict[str, Any]) -> None:
    run = run_script(fake_gcloud["env"], "--dry-run", "--project", PROJECT)
    assert run.returncode == 0, run.stderr
    assert calls(fake_gcloud) == []
    lines = [line for line in run.stdout.splitlines() if not line.startswith("#")]
    assert len(lines) == len(METRIC_FILES) + len(POLICY_FILES) + len(DASHBOARD_FILES)
    for path in METRIC_FILES:
        name, relative = path.stem, path.relative_to(ROOT).as_posix()
        assert (
            f"if gcloud logging metrics describe {name} --project={PROJECT} >/dev/null 2>&1; "
            f"then gcloud logging metrics update {name} --project={PROJECT} --config-from-file={relative}; "
            f"else gcloud logging metrics create {name} --project={PROJECT} --config-from-file={relative}; fi"
        ) in lines
    for path in POLICY_FILES:
        title = json.loads(path.read_text())["displayName"]
        relative = path.relative_to(ROOT).as_posix()
        assert any(
            f"gcloud monitoring policies list --project={PROJECT} '--filter=displayName=\"{title}\"'"
            in line
            and f"gcloud monitoring policies create --project={PROJECT} --policy-from-file={relative}"
            in line
            for line in lines
        ), title
    assert any(
        "gcloud monitoring dashboards create" in line
        and "--config-from-file=monitoring/dashboards/" in line
        for line in lines
    )
    # The order matters: the policies and the dashboard chart the log-based metrics.
    kinds = [("metrics" if "logging metrics" in line else "other") for line in lines]
    assert kinds == sorted(kinds, key=lambda k: k != "metrics")


def test_dry_run_lines_are_shell_that_works(fake_gcloud: dict[str, Any]) -> None:
    run = run_script(fake_gcloud["env"], "--dry-run", "--project", PROJECT)
    executed = subprocess.run(
        ["bash", "-euc", run.stdout],
        env=fake_gcloud["env"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert executed.returncode == 0, executed.stderr
    state = json.loads(fake_gcloud["state"].read_text())
    assert sorted(state["metrics"]) == sorted(p.stem for p in METRIC_FILES)
    assert len(state["policies"]) == len(POLICY_FILES)


def test_applies_everything_once_and_a_second_run_updates(fake_gcloud: dict[str, Any]) -> None:
    first = run_script(fake_gcloud["env"], "--project", PROJECT)
    assert first.returncode == 0, first.stderr
    first_calls = calls(fake_gcloud)
    creates = [c for c in first_calls if "create" in c]
    assert len(creates) == len(METRIC_FILES) + len(POLICY_FILES) + len(DASHBOARD_FILES)
    assert all(f"--project={PROJECT}" in c for c in first_calls if c[:2] != ["auth", "list"])
    second = run_script(fake_gcloud["env"], "--project", PROJECT)
    assert second.returncode == 0, second.stderr
    second_calls = calls(fake_gcloud)[len(first_calls) :]
    assert [c for c in second_calls if "create" in c] == []
    updates = [c for c in second_calls if "update" in c]
    assert len(updates) == len(METRIC_FILES) + len(POLICY_FILES) + len(DASHBOARD_FILES)
    state = json.loads(fake_gcloud["state"].read_text())
    assert len(state["policies"]) == len(POLICY_FILES)
    assert len(state["dashboards"]) == len(DASHBOARD_FILES)
    assert "monitoring applied to engagement-prod-1" in second.stdout


def test_notification_channels_are_written_into_every_policy(
    fake_gcloud: dict[str, Any], tmp_path: Path
) -> None:
    channel = f"projects/{PROJECT}/notificationChannels/4242"
    # Keep a copy of each policy file the stand-in receives.
    gcloud = Path(fake_gcloud["env"]["PATH"].split(":")[0]) / "gcloud"
    keep = tmp_path / "sent"
    keep.mkdir()
    gcloud.write_text(
        gcloud.read_text().replace(
            "    source = flags.get(",
            "    import shutil\n"
            f"    if 'policy-from-file' in flags: shutil.copy(flags['policy-from-file'], {str(keep)!r})\n"
            "    source = flags.get(",
        )
    )
    run = run_script(fake_gcloud["env"], "--project", PROJECT, "--notification-channels", channel)
    assert run.returncode == 0, run.stderr
    sent = sorted(keep.glob("*.json"))
    assert len(sent) == len(POLICY_FILES)
    for path in sent:
        assert json.loads(path.read_text())["notificationChannels"] == [channel]
    assert not any(
        Path(c.split("=", 1)[1]).exists()
        for call in calls(fake_gcloud)
        for c in call
        if c.startswith("--policy-from-file=/")
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "no project"),
        (("--project", "Not_A_Project"), "not a Google Cloud project id"),
        (
            ("--project", PROJECT, "--notification-channels", "email-me"),
            "not a notification channel",
        ),
        (("--bogus",), "unknown option"),
    ],
)
def test_bad_inputs_stop_before_any_change(
    fake_gcloud: dict[str, Any], args: tuple[str, ...], message: str
) -> None:
    state = json.loads(fake_gcloud["state"].read_text())
    state["project"] = ""
    fake_gcloud["state"].write_text(json.dumps(state))
    run = run_script(fake_gcloud["env"], *args)
    assert run.returncode != 0
    assert message in run.stderr
    assert [c for c in calls(fake_gcloud) if "create" in c or "update" in c] == []


def test_not_logged_in_stops_before_any_change(fake_gcloud: dict[str, Any]) -> None:
    state = json.loads(fake_gcloud["state"].read_text())
    state["account"] = ""
    fake_gcloud["state"].write_text(json.dumps(state))
    run = run_script(fake_gcloud["env"], "--project", PROJECT)
    assert run.returncode != 0
    assert "not logged in" in run.stderr
    assert [c for c in calls(fake_gcloud) if "create" in c or "update" in c] == []


def test_help_explains_every_option() -> None:
    run = subprocess.run(
        ["bash", str(SCRIPT), "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0
    for option in ("--project", "--notification-channels", "--dry-run", "--help"):
        assert option in run.stdout


# Field names of the Cloud Monitoring and Logging API resources the files are read as
# (AlertPolicy, LogMetric, Dashboard), so that a misspelt key is caught here and not by gcloud.
POLICY_KEYS = {
    "displayName",
    "documentation",
    "conditions",
    "combiner",
    "alertStrategy",
    "severity",
    "notificationChannels",
    "userLabels",
    "enabled",
}
CONDITION_KEYS = {
    "displayName",
    "conditionThreshold",
    "conditionPrometheusQueryLanguage",
    "conditionAbsent",
}
THRESHOLD_KEYS = {
    "filter",
    "aggregations",
    "denominatorFilter",
    "denominatorAggregations",
    "comparison",
    "thresholdValue",
    "duration",
    "trigger",
    "evaluationMissingData",
}
PROMQL_KEYS = {"query", "duration", "evaluationInterval", "labels", "ruleGroup", "alertRule"}
AGGREGATION_KEYS = {"alignmentPeriod", "perSeriesAligner", "crossSeriesReducer", "groupByFields"}
ALIGNERS = {"ALIGN_DELTA", "ALIGN_RATE", "ALIGN_SUM", "ALIGN_PERCENTILE_95", "ALIGN_PERCENTILE_50"}
REDUCERS = {"REDUCE_SUM", "REDUCE_PERCENTILE_95", "REDUCE_PERCENTILE_50", "REDUCE_MAX"}
LOG_METRIC_KEYS = {
    "description",
    "filter",
    "metricDescriptor",
    "valueExtractor",
    "labelExtractors",
    "bucketOptions",
    "disabled",
}
DESCRIPTOR_KEYS = {"metricKind", "valueType", "unit", "displayName", "labels", "description"}
WIDGET_KEYS = {"title", "xyChart", "text", "scorecard"}


def aggregations_in(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("aggregation", "secondaryAggregation"):
                yield value
            elif key in ("aggregations", "denominatorAggregations"):
                yield from value
            else:
                yield from aggregations_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from aggregations_in(item)


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: p.name)
def test_alert_policy_uses_only_api_field_names(path: Path) -> None:
    policy = json.loads(path.read_text())
    assert set(policy) <= POLICY_KEYS
    assert policy["combiner"] in {"OR", "AND"}
    assert policy["severity"] in {"CRITICAL", "ERROR", "WARNING"}
    assert policy["documentation"]["mimeType"] == "text/markdown"
    for condition in policy["conditions"]:
        assert set(condition) <= CONDITION_KEYS
        if "conditionThreshold" in condition:
            threshold = condition["conditionThreshold"]
            assert set(threshold) <= THRESHOLD_KEYS
            assert threshold["comparison"] in {"COMPARISON_GT", "COMPARISON_LT"}
            assert re.fullmatch(r"\d+s", threshold["duration"])
        else:
            assert set(condition["conditionPrometheusQueryLanguage"]) <= PROMQL_KEYS
    for aggregation in aggregations_in(policy):
        assert set(aggregation) <= AGGREGATION_KEYS
        assert aggregation["perSeriesAligner"] in ALIGNERS
        assert aggregation["crossSeriesReducer"] in REDUCERS
        assert re.fullmatch(r"\d+s", aggregation["alignmentPeriod"])


@pytest.mark.parametrize("path", METRIC_FILES, ids=lambda p: p.name)
def test_log_metric_uses_only_api_field_names(path: Path) -> None:
    metric = yaml.safe_load(path.read_text())
    assert set(metric) <= LOG_METRIC_KEYS
    assert set(metric["metricDescriptor"]) <= DESCRIPTOR_KEYS
    assert metric["metricDescriptor"]["valueType"] in {"INT64", "DISTRIBUTION"}
    # A log-based metric's name is its file name: letters, digits and underscores.
    assert re.fullmatch(r"[a-z][a-z0-9_]*", path.stem)


def test_dashboard_uses_only_api_field_names() -> None:
    for path in DASHBOARD_FILES:
        dashboard = json.loads(path.read_text())
        assert set(dashboard) == {"displayName", "mosaicLayout"}
        layout = dashboard["mosaicLayout"]
        assert layout["columns"] <= 48
        for tile in layout["tiles"]:
            assert set(tile) == {"xPos", "yPos", "width", "height", "widget"}
            assert tile["xPos"] + tile["width"] <= layout["columns"]
            assert set(tile["widget"]) <= WIDGET_KEYS
            for data_set in tile["widget"].get("xyChart", {}).get("dataSets", []):
                assert set(data_set) <= {"timeSeriesQuery", "plotType", "legendTemplate"}
                assert data_set["plotType"] in {"LINE", "STACKED_BAR", "STACKED_AREA"}
                assert len(data_set["timeSeriesQuery"]) == 1
                assert set(data_set["timeSeriesQuery"]) <= {"timeSeriesFilter", "prometheusQuery"}
        for aggregation in aggregations_in(dashboard):
            assert aggregation["perSeriesAligner"] in ALIGNERS
            assert aggregation["crossSeriesReducer"] in REDUCERS
