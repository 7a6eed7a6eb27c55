"""deploy.sh against a stand-in `gcloud` that records every call, and the upload's ignore file.

The stand-in is a small Python script on PATH ahead of any real gcloud. It keeps the state of a
pretend project (which service accounts, secrets, functions and scheduler jobs exist) in a JSON
file, so a second run of deploy.sh sees what the first one created, and it records each call's
arguments, its stdin when gcloud would read a secret from stdin, and the content and mode of a
`--flags-file`. The tests check the commands deploy.sh sends, not a real deployment.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from localdb.cluster import ROOT
from tests.conftest import AppFactory, Database

DEPLOY = ROOT / "deploy.sh"
PROJECT = "engagement-prod-1"
REGION = "europe-west1"
URL = "https://batch-import-abc123-ew.a.run.app"
RUNTIME_SA = f"engagement-functions@{PROJECT}.iam.gserviceaccount.com"
SCHEDULER_SA = f"engagement-scheduler@{PROJECT}.iam.gserviceaccount.com"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"

# Recognizable secret values: none of them may appear in an argument or in deploy.sh's output.
SECRETS = {
    "SUPABASE_JWT_SECRET": "jwt-secret-VALUE-0123456789abcdefghijklmnopqrstuv",
    "SUPABASE_SECRET_KEYS": "sb_secret_SCHEDULERkey0123456789abcdef,sb_secret_OTHERkey987654321",
    "DATABASE_URL": "postgresql://postgres.ref:DBPASSWORD-s3cr3t@pooler.example.com:6543/postgres",
    "SUPABASE_SERVICE_ROLE_KEY": "service-role-KEY-value-abcdefghijklmnop",
}
SECRET_FRAGMENTS = (
    "jwt-secret-VALUE",
    "SCHEDULERkey0123456789abcdef",
    "OTHERkey987654321",
    "DBPASSWORD-s3cr3t",
    "service-role-KEY-value",
)

# -S: no site packages, so each of the many calls starts fast; it needs the standard library only.
FAKE_GCLOUD = r"""#!{python} -S
import json, os, stat, sys

args = sys.argv[1:]
state_path = os.environ["FAKE_GCLOUD_STATE"]
with open(state_path) as handle:
    state = json.load(handle)
record = {"argv": args}
for arg in args:
    if arg.startswith("--flags-file="):
        path = arg.split("=", 1)[1]
        with open(path) as handle:
            record["flags_file"] = handle.read()
        record["flags_file_mode"] = stat.S_IMODE(os.stat(path).st_mode)
if "--data-file=-" in args:
    record["stdin"] = sys.stdin.read()
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as handle:
    handle.write(json.dumps(record) + "\n")

words = [a for a in args if not a.startswith("-")]
flags = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
existing = set(state["existing"])

def save():
    state["existing"] = sorted(existing)
    with open(state_path, "w") as handle:
        json.dump(state, handle)

def found(key):
    if key in existing:
        print("name: " + key)
        sys.exit(0)
    print("ERROR: NOT_FOUND: " + key, file=sys.stderr)
    sys.exit(1)

command = " ".join(words[:3])
if words[:2] == ["auth", "list"]:
    if state.get("account"):
        print(state["account"])
elif words[:3] == ["iam", "service-accounts", "describe"]:
    found("sa:" + words[3])
elif words[:3] == ["iam", "service-accounts", "create"]:
    existing.add("sa:" + words[3] + "@" + flags["project"] + ".iam.gserviceaccount.com")
elif words[:2] == ["secrets", "describe"]:
    found("secret:" + words[2])
elif words[:2] == ["secrets", "create"]:
    existing.add("secret:" + words[2])
    state["values"][words[2]] = record["stdin"]
elif words[:3] == ["secrets", "versions", "add"]:
    state["values"][words[3]] = record["stdin"]
elif words[:3] == ["secrets", "versions", "access"]:
    print(state["values"][flags["secret"]], end="")
elif words[:2] == ["secrets", "add-iam-policy-binding"]:
    pass
elif words[:2] == ["functions", "deploy"]:
    existing.add("function:" + words[2])
elif words[:2] == ["functions", "describe"]:
    if "function:" + words[2] not in existing:
        sys.exit(1)
    print(state["url"])
elif words[:2] == ["functions", "add-invoker-policy-binding"]:
    pass
elif words[:3] == ["scheduler", "jobs", "describe"]:
    found("job:" + words[3])
elif words[:3] == ["scheduler", "jobs", "create"]:
    existing.add("job:" + words[4])
elif words[:3] == ["scheduler", "jobs", "update"]:
    if "job:" + words[4] not in existing:
        sys.exit(1)
elif words[:2] == ["services", "enable"]:
    pass
else:
    print("fake gcloud: unexpected command " + " ".join(args), file=sys.stderr)
    sys.exit(3)
save()
"""

# gcloud verbs that change something; a dry run must send none of them.
MUTATIONS = {
    "deploy",
    "create",
    "update",
    "enable",
    "add",
    "add-iam-policy-binding",
    "add-invoker-policy-binding",
    "delete",
}


@dataclass
class Run:
    """One run of deploy.sh: its result and the gcloud calls it made."""

    returncode: int
    stdout: str
    stderr: str
    calls: list[dict[str, Any]]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def argvs(self) -> list[list[str]]:
        return [call["argv"] for call in self.calls]

    def find(self, *words: str) -> list[dict[str, Any]]:
        """Calls whose leading words (arguments not starting with -) are `words`."""
        return [call for call in self.calls if _words(call["argv"])[: len(words)] == list(words)]

    def deploy_flags(self, function: str) -> dict[str, str]:
        (call,) = self.find("functions", "deploy", function)
        return _flags(call["argv"])


def _words(argv: list[str]) -> list[str]:
    return [a for a in argv if not a.startswith("-")]


def _flags(argv: list[str]) -> dict[str, str]:
    flags: dict[str, str] = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg[2:].partition("=")
            flags[name] = value
    return flags


def _is_mutation(argv: list[str]) -> bool:
    words = _words(argv)
    if words[:2] == ["auth", "list"]:
        return False
    return any(word in MUTATIONS for word in words[:3])


class FakeProject:
    """The stand-in gcloud, its pretend project and a way to run deploy.sh against it."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        gcloud = self.bin / "gcloud"
        gcloud.write_text(FAKE_GCLOUD.replace("{python}", sys.executable))
        gcloud.chmod(0o755)
        self.state_path = tmp_path / "state.json"
        self.log_path = tmp_path / "calls.jsonl"
        self.tmp = tmp_path / "tmp"
        self.tmp.mkdir()
        self.body = tmp_path / "steps.json"
        self.body.write_text(
            json.dumps(
                {
                    "events": [
                        {
                            "event_id": "5b7f8a2e-1f3c-4d5e-9a6b-7c8d9e0f1a2b",
                            "user_id": ANA,
                            "event_type": "steps_import",
                            "timestamp": "2025-06-01T23:00:00Z",
                            "value": {"steps": 9120, "source": "garmin"},
                        }
                    ]
                }
            )
        )
        self.write_state(account="ops@example.com", existing=[])

    def write_state(self, *, account: str | None, existing: list[str]) -> None:
        self.state_path.write_text(
            json.dumps({"account": account, "existing": existing, "values": {}, "url": URL})
        )

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.state_path.read_text())
        return state

    def env(self, **overrides: str | None) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "HOME": str(self.dir),
            "TMPDIR": str(self.tmp),
            "LC_ALL": "C.UTF-8",
            "FAKE_GCLOUD_STATE": str(self.state_path),
            "FAKE_GCLOUD_LOG": str(self.log_path),
            "PROJECT_ID": PROJECT,
            "REGION": REGION,
            "SCHEDULER_BODY_FILE": str(self.body),
            "SUPABASE_URL": "https://abcdefghijklmnop.supabase.co",
            "RATE_LIMIT_REQUESTS_PER_MINUTE": "120",
            **SECRETS,
        }
        for name, value in overrides.items():
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        return env

    def run(self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> Run:
        self.log_path.write_text("")
        result = subprocess.run(
            ["bash", str(DEPLOY), *args],
            cwd=cwd,
            env=env if env is not None else self.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        calls = [json.loads(line) for line in self.log_path.read_text().splitlines() if line]
        return Run(result.returncode, result.stdout, result.stderr, calls)


@pytest.fixture
def project(tmp_path: Path) -> FakeProject:
    return FakeProject(tmp_path)


FULL = ("--create-service-accounts", "--create-secrets")


def assert_no_secret_leaked(run: Run) -> None:
    for fragment in SECRET_FRAGMENTS:
        assert fragment not in run.output, f"{fragment} printed by deploy.sh"
        for argv in run.argvs():
            assert not any(fragment in arg for arg in argv), f"{fragment} in gcloud argv {argv}"


# ---------------------------------------------------------------------------------- functions


def test_first_run_deploys_each_function_with_explicit_settings(project: FakeProject) -> None:
    run = project.run(*FULL)
    assert run.returncode == 0, run.output

    common = {
        "gen2": "",
        "project": PROJECT,
        "region": REGION,
        "runtime": "python313",
        "source": ".",
        "trigger-http": "",
        "allow-unauthenticated": "",
        "service-account": RUNTIME_SA,
        "min-instances": "0",
        "ingress-settings": "all",
        "update-labels": "app=engagement-events",
        "quiet": "",
    }
    batch = run.deploy_flags("batch_import")
    assert batch == {
        **common,
        "entry-point": "batch_import",
        "memory": "1Gi",
        "cpu": "1",
        "timeout": "60s",
        "max-instances": "10",
        "concurrency": "4",
        # One gunicorn process with one thread per concurrent request (docs/deployment.md).
        "set-env-vars": f"GOOGLE_CLOUD_PROJECT={PROJECT},WORKERS=1,THREADS=4,"
        "SUPABASE_URL=https://abcdefghijklmnop.supabase.co,"
        "TIME_BUDGET_SECONDS=50,RATE_LIMIT_REQUESTS_PER_MINUTE=120",
        "set-secrets": "SUPABASE_JWT_SECRET=engagement-supabase-jwt-secret:latest,"
        "SUPABASE_SECRET_KEYS=engagement-supabase-secret-keys:latest,"
        "DATABASE_URL=engagement-database-url:latest",
    }
    for helper in ("convert_timestamps", "verify_service_jwt"):
        assert run.deploy_flags(helper) == {
            **common,
            "entry-point": helper,
            "memory": "512Mi",
            "cpu": "1",
            "timeout": "30s",
            "max-instances": "5",
            "concurrency": "4",
            # No sink secret and no batch_import-only settings for the helpers.
            "set-env-vars": f"GOOGLE_CLOUD_PROJECT={PROJECT},WORKERS=1,THREADS=4,"
            "SUPABASE_URL=https://abcdefghijklmnop.supabase.co",
            "set-secrets": "SUPABASE_JWT_SECRET=engagement-supabase-jwt-secret:latest,"
            "SUPABASE_SECRET_KEYS=engagement-supabase-secret-keys:latest",
        }
    assert_no_secret_leaked(run)


def test_secrets_are_created_from_stdin_and_granted_to_the_runtime_account(
    project: FakeProject,
) -> None:
    run = project.run(*FULL)
    assert run.returncode == 0, run.output
    created = {_words(c["argv"])[2]: c.get("stdin") for c in run.find("secrets", "create")}
    assert created == {
        "engagement-supabase-jwt-secret": SECRETS["SUPABASE_JWT_SECRET"],
        "engagement-supabase-secret-keys": SECRETS["SUPABASE_SECRET_KEYS"],
        "engagement-database-url": SECRETS["DATABASE_URL"],
    }
    grants = {
        _words(c["argv"])[2]: _flags(c["argv"])
        for c in run.find("secrets", "add-iam-policy-binding")
    }
    assert set(grants) == set(created)
    for flags in grants.values():
        assert flags["member"] == f"serviceAccount:{RUNTIME_SA}"
        assert flags["role"] == "roles/secretmanager.secretAccessor"
    # The service accounts are created once, before anything that needs them.
    made = [_words(c["argv"])[3] for c in run.find("iam", "service-accounts", "create")]
    assert made == ["engagement-functions", "engagement-scheduler"]
    assert "(value of DATABASE_URL, not shown)" in run.stdout
    assert_no_secret_leaked(run)


def test_every_check_runs_before_the_first_change(project: FakeProject) -> None:
    run = project.run(*FULL)
    assert run.returncode == 0, run.output
    first_change = next(i for i, argv in enumerate(run.argvs()) if _is_mutation(argv))
    checked = [_words(argv)[:3] for argv in run.argvs()[:first_change]]
    assert checked[0] == ["auth", "list"]
    assert ["iam", "service-accounts", "describe"] in checked
    described = {
        _words(argv)[2]
        for argv in run.argvs()[:first_change]
        if _words(argv)[:2] == ["secrets", "describe"]
    }
    assert described == {
        "engagement-supabase-jwt-secret",
        "engagement-supabase-secret-keys",
        "engagement-database-url",
    }


def test_rest_sink_gets_the_service_role_key_and_no_database_url(project: FakeProject) -> None:
    run = project.run(*FULL, "--sink", "rest", "--credentials", "jwks,secret_keys")
    assert run.returncode == 0, run.output
    batch = run.deploy_flags("batch_import")
    assert batch["set-secrets"] == (
        "SUPABASE_SECRET_KEYS=engagement-supabase-secret-keys:latest,"
        "SUPABASE_SERVICE_ROLE_KEY=engagement-supabase-service-role-key:latest"
    )
    assert "DATABASE_URL" not in json.dumps(run.argvs())
    assert "SUPABASE_URL=https://abcdefghijklmnop.supabase.co" in batch["set-env-vars"]
    assert run.deploy_flags("verify_service_jwt")["set-secrets"] == (
        "SUPABASE_SECRET_KEYS=engagement-supabase-secret-keys:latest"
    )
    assert_no_secret_leaked(run)


def test_private_access_keeps_the_functions_behind_google_iam(project: FakeProject) -> None:
    run = project.run(*FULL, "--access", "private")
    assert run.returncode == 0, run.output
    for function in ("batch_import", "convert_timestamps", "verify_service_jwt"):
        flags = run.deploy_flags(function)
        assert "no-allow-unauthenticated" in flags
        assert "allow-unauthenticated" not in flags
    (binding,) = run.find("functions", "add-invoker-policy-binding", "batch_import")
    assert _flags(binding["argv"])["member"] == f"serviceAccount:{SCHEDULER_SA}"


# ---------------------------------------------------------------------------------- scheduler


def test_scheduler_job_is_created_with_oidc_and_the_key_in_a_private_flags_file(
    project: FakeProject,
) -> None:
    run = project.run(*FULL)
    assert run.returncode == 0, run.output
    (job,) = run.find("scheduler", "jobs", "create", "http", "engagement-steps-import")
    flags = _flags(job["argv"])
    assert flags["uri"] == URL
    assert flags["oidc-service-account-email"] == SCHEDULER_SA
    assert flags["oidc-token-audience"] == URL
    assert flags["http-method"] == "POST"
    assert flags["message-body-from-file"] == str(project.body)
    assert flags["schedule"] == "0 3 * * *"
    assert flags["time-zone"] == "Etc/UTC"
    assert flags["attempt-deadline"] == "90s"
    assert flags["location"] == REGION
    headers = json.loads(job["flags_file"])
    assert headers == {
        "--headers": {
            "apikey": "sb_secret_SCHEDULERkey0123456789abcdef",
            "Content-Type": "application/json",
        }
    }
    assert job["flags_file_mode"] == 0o600
    assert not Path(flags["flags-file"]).exists(), "the file holding the key was left behind"
    assert list(project.tmp.iterdir()) == []
    assert_no_secret_leaked(run)


def test_second_run_updates_the_job_and_creates_nothing_again(project: FakeProject) -> None:
    first = project.run(*FULL)
    assert first.returncode == 0, first.output
    second = project.run(*FULL)
    assert second.returncode == 0, second.output

    assert second.find("secrets", "create") == []
    assert second.find("secrets", "versions", "add") == [], "same values: no new version"
    assert second.find("iam", "service-accounts", "create") == []
    assert second.find("scheduler", "jobs", "create") == []
    (update,) = second.find("scheduler", "jobs", "update", "http", "engagement-steps-import")
    assert "--headers" not in json.loads(update["flags_file"])
    assert json.loads(update["flags_file"])["--update-headers"]["apikey"].startswith("sb_secret_")
    for function in ("batch_import", "convert_timestamps", "verify_service_jwt"):
        assert second.deploy_flags(function) == first.deploy_flags(function)
    assert_no_secret_leaked(second)


def test_a_changed_secret_value_becomes_a_new_version(project: FakeProject) -> None:
    assert project.run(*FULL).returncode == 0
    rotated = "postgresql://postgres.ref:NEWPASSWORD-r0tated@pooler.example.com:6543/postgres"
    run = project.run(*FULL, env=project.env(DATABASE_URL=rotated))
    assert run.returncode == 0, run.output
    (added,) = run.find("secrets", "versions", "add")
    assert _words(added["argv"])[3] == "engagement-database-url"
    assert added["stdin"] == rotated
    assert "NEWPASSWORD" not in run.output + json.dumps(run.argvs())


def test_without_create_secrets_the_job_gets_the_stored_key_not_the_environment(
    project: FakeProject,
) -> None:
    assert project.run(*FULL).returncode == 0
    stray = "sb_secret_STRAYkeyFROMtheSHELL0123456789"
    run = project.run(env=project.env(SUPABASE_SECRET_KEYS=stray))
    assert run.returncode == 0, run.output
    (job,) = run.find("scheduler", "jobs", "update")
    sent = json.loads(job["flags_file"])["--update-headers"]["apikey"]
    assert sent == "sb_secret_SCHEDULERkey0123456789abcdef"
    assert run.find("secrets", "versions", "add") == []


def test_generated_scheduler_key_is_stored_and_sent(project: FakeProject) -> None:
    run = project.run(*FULL, env=project.env(SUPABASE_SECRET_KEYS=None))
    assert run.returncode == 0, run.output
    stored = project.state()["values"]["engagement-supabase-secret-keys"]
    assert re.fullmatch(r"sb_secret_[A-Za-z0-9_-]{40}", stored)
    (job,) = run.find("scheduler", "jobs", "create")
    assert json.loads(job["flags_file"])["--headers"]["apikey"] == stored
    assert stored not in run.output
    assert not any(stored in arg for argv in run.argvs() for arg in argv)


def test_a_relative_body_file_is_read_from_where_the_script_was_started(
    project: FakeProject,
) -> None:
    run = project.run(*FULL, env=project.env(SCHEDULER_BODY_FILE="steps.json"), cwd=project.dir)
    assert run.returncode == 0, run.output
    (job,) = run.find("scheduler", "jobs", "create")
    assert _flags(job["argv"])["message-body-from-file"] == str(project.body)


def test_no_scheduler_leaves_jobs_alone(project: FakeProject) -> None:
    run = project.run(*FULL, "--no-scheduler", env=project.env(SCHEDULER_BODY_FILE=None))
    assert run.returncode == 0, run.output
    assert run.find("scheduler") == []
    assert len(run.find("functions", "deploy")) == 3


# ---------------------------------------------------------------------------------- dry run


def test_dry_run_prints_every_change_and_makes_none(project: FakeProject) -> None:
    run = project.run(*FULL, "--dry-run")
    assert run.returncode == 0, run.output
    mutations = [argv for argv in run.argvs() if _is_mutation(argv)]
    assert mutations == []
    printed = [line for line in run.stdout.splitlines() if line.startswith("[dry-run] gcloud ")]
    for expected in (
        "gcloud iam service-accounts create engagement-functions",
        "gcloud secrets create engagement-database-url",
        "gcloud secrets add-iam-policy-binding engagement-supabase-jwt-secret",
        "gcloud functions deploy batch_import --gen2",
        "gcloud functions deploy convert_timestamps --gen2",
        "gcloud functions deploy verify_service_jwt --gen2",
        "gcloud functions add-invoker-policy-binding batch_import",
        "gcloud scheduler jobs create http engagement-steps-import",
    ):
        assert any(expected in line for line in printed), f"not printed: {expected}"
    assert "(value of SUPABASE_JWT_SECRET, not shown)" in run.stdout
    assert project.state()["existing"] == []
    assert_no_secret_leaked(run)


def test_dry_run_after_a_deploy_reads_no_secret_and_plans_updates(project: FakeProject) -> None:
    assert project.run(*FULL).returncode == 0
    existing = project.state()["existing"]
    run = project.run(*FULL, "--dry-run")
    assert run.returncode == 0, run.output
    assert [argv for argv in run.argvs() if _is_mutation(argv)] == []
    assert run.find("secrets", "versions", "access") == [], "a dry run read a secret value"
    assert "[dry-run] gcloud scheduler jobs update http engagement-steps-import" in run.stdout
    assert "gcloud secrets create" not in run.stdout
    assert project.state()["existing"] == existing
    assert_no_secret_leaked(run)


# ---------------------------------------------------------------------------------- inputs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"PROJECT_ID": None}, "PROJECT_ID is not set"),
        ({"REGION": None}, "REGION is not set"),
        ({"REGION": "Europe West"}, "is not a Google Cloud region name"),
        ({"SCHEDULER_BODY_FILE": None}, "SCHEDULER_BODY_FILE is not set"),
        ({"SINK": "rest", "SUPABASE_URL": None}, "SUPABASE_URL is not set"),
        ({"TIME_BUDGET_SECONDS": "55"}, "must be at least 10 s under BATCH_IMPORT_TIMEOUT"),
        ({"BATCH_IMPORT_MAX_INSTANCES": "40"}, "could open 160 pooler connections"),
        ({"CREDENTIALS": "jwt_secret"}, "add secret_keys to CREDENTIALS"),
        ({"BATCH_IMPORT_CONCURRENCY": "four"}, "BATCH_IMPORT_CONCURRENCY must be a whole number"),
        ({"SCHEDULER_ATTEMPT_DEADLINE": "60"}, "must exceed BATCH_IMPORT_TIMEOUT"),
        ({"RATE_LIMIT_EVENTS_PER_MINUTE": "5000"}, "must be 0 or at least MAX_BATCH_EVENTS"),
    ],
)
def test_bad_inputs_fail_with_a_message_before_any_gcloud_call(
    project: FakeProject, overrides: dict[str, str | None], message: str
) -> None:
    run = project.run(*FULL, env=project.env(**overrides))
    assert run.returncode == 2
    assert message in run.stderr
    assert "nothing was changed" in run.stderr
    assert run.calls == []


def test_every_missing_input_is_reported_at_once(project: FakeProject) -> None:
    run = project.run(env=project.env(PROJECT_ID=None, REGION=None, SCHEDULER_BODY_FILE=None))
    assert run.returncode == 2
    for message in ("PROJECT_ID is not set", "REGION is not set", "SCHEDULER_BODY_FILE is not set"):
        assert message in run.stderr
    assert run.calls == []


def test_a_body_with_other_event_types_is_refused(project: FakeProject) -> None:
    project.body.write_text(json.dumps([{"user_id": ANA, "event_type": "app_open"}]))
    run = project.run(*FULL)
    assert run.returncode == 2
    assert "must hold steps_import events only" in run.stderr
    assert run.calls == []


def test_an_account_of_another_project_is_not_created(project: FakeProject) -> None:
    other = "ingest@other-project-9.iam.gserviceaccount.com"
    run = project.run(*FULL, env=project.env(RUNTIME_SERVICE_ACCOUNT=other))
    assert run.returncode == 2
    assert f"{other} is not one" in run.stderr
    assert run.calls == []


def test_without_gcloud_on_path_it_says_so(project: FakeProject, tmp_path: Path) -> None:
    # A PATH with the tools deploy.sh uses, and no gcloud (a real one may be installed).
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "python3").symlink_to(sys.executable)
    for tool in ("bash", "dirname", "cat", "head", "base64", "tr", "mktemp", "rm"):
        found = shutil.which(tool)
        assert found, tool
        (tools / tool).symlink_to(found)
    run = project.run(*FULL, env=project.env(PATH=str(tools)))
    assert run.returncode == 2
    assert "gcloud is not on PATH" in run.stderr


def test_without_an_active_account_it_stops_after_asking(project: FakeProject) -> None:
    project.write_state(account=None, existing=[])
    run = project.run(*FULL)
    assert run.returncode == 2
    assert "gcloud has no active account" in run.stderr
    assert [_words(argv)[:2] for argv in run.argvs()] == [["auth", "list"]]


def test_missing_secret_without_create_secrets_changes_nothing(project: FakeProject) -> None:
    project.write_state(
        account="ops@example.com", existing=[f"sa:{RUNTIME_SA}", f"sa:{SCHEDULER_SA}"]
    )
    run = project.run()
    assert run.returncode == 2
    assert "secret engagement-database-url (for DATABASE_URL) does not exist" in run.stderr
    assert "--create-secrets" in run.stderr
    assert [argv for argv in run.argvs() if _is_mutation(argv)] == []


def test_a_stored_key_the_scheduler_cannot_send_stops_before_any_change(
    project: FakeProject,
) -> None:
    names = ["engagement-supabase-jwt-secret", "engagement-supabase-secret-keys"]
    names.append("engagement-database-url")
    state = {
        "account": "ops@example.com",
        "existing": [f"sa:{RUNTIME_SA}", f"sa:{SCHEDULER_SA}", *(f"secret:{n}" for n in names)],
        "values": {"engagement-supabase-secret-keys": "not-an-sb-secret-key"},
        "url": URL,
    }
    project.state_path.write_text(json.dumps(state))
    run = project.run(env=project.env(SUPABASE_SECRET_KEYS=None))
    assert run.returncode == 2
    assert "is not an sb_secret_ key" in run.stderr
    assert "nothing was changed" in run.stderr
    assert [argv for argv in run.argvs() if _is_mutation(argv)] == []
    assert "not-an-sb-secret-key" not in run.output


def test_help_explains_every_option_and_variable(project: FakeProject) -> None:
    run = project.run("--help")
    assert run.returncode == 0
    assert run.calls == []
    script = DEPLOY.read_text()
    options = set(re.findall(r"^\s+(--[a-z-]+)[ )|]", script, flags=re.MULTILINE))
    options |= set(re.findall(r"\| (--[a-z-]+)", script))
    assert "--dry-run" in options
    for option in options:
        assert option in run.stdout, f"{option} is not explained by --help"
    settings = set(re.findall(r"^([A-Z_]+)=\$\{\1:-", script, flags=re.MULTILINE))
    assert "BATCH_IMPORT_MAX_INSTANCES" in settings
    for name in settings | {"RATE_LIMIT_EVENTS_PER_MINUTE", "MAX_BODY_BYTES", "SUPABASE_URL"}:
        assert name in run.stdout, f"{name} is not explained by --help"


def test_unknown_option_is_refused(project: FakeProject) -> None:
    run = project.run("--regoin", "europe-west1")
    assert run.returncode == 2
    assert "unknown option: --regoin" in run.stderr
    assert run.calls == []


# ---------------------------------------------------------------------------------- the request


def _google_id_token(audience: str) -> str:
    """A token shaped like the one Cloud Scheduler sends (Cloud Run has checked it already)."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    now = int(time.time())
    claims = {
        "iss": "https://accounts.google.com",
        "aud": audience,
        "email": SCHEDULER_SA,
        "iat": now,
        "exp": now + 3600,
    }
    return (
        f"{part({'alg': 'RS256', 'kid': 'google-key', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"
    )


@pytest.fixture
def scheduler_target(db: Database, function_app: AppFactory) -> Any:
    """batch_import configured as deploy.sh configures it (direct sink, scheduler key)."""
    return function_app(
        "batch_import",
        DATABASE_URL=db.url,
        SUPABASE_SECRET_KEYS=SECRETS["SUPABASE_SECRET_KEYS"],
        SUPABASE_JWT_SECRET=None,
        SUPABASE_URL=None,
    ).test_client()


@pytest.mark.db
def test_the_request_the_scheduler_job_sends_is_accepted(
    project: FakeProject, db: Database, scheduler_target: Any
) -> None:
    run = project.run(*FULL)
    assert run.returncode == 0, run.output
    (job,) = run.find("scheduler", "jobs", "create")
    headers = dict(json.loads(job["flags_file"])["--headers"])
    headers["Authorization"] = f"Bearer {_google_id_token(URL)}"  # added by Cloud Scheduler
    body = Path(_flags(job["argv"])["message-body-from-file"]).read_bytes()

    response = scheduler_target.post("/", data=body, headers=headers)
    assert response.status_code == 200, response.json
    assert response.json["inserted"] == 1
    again = scheduler_target.post("/", data=body, headers=headers)
    assert (again.json["inserted"], again.json["duplicates"]) == (0, 1)
    with db.connect() as conn:
        row = conn.execute(
            "select user_id::text, event_type, value from public.engagement_events"
            " where id = '5b7f8a2e-1f3c-4d5e-9a6b-7c8d9e0f1a2b'"
        ).fetchone()
    assert row == (ANA, "steps_import", {"steps": 9120, "source": "garmin"})

    # Without the key, the Google token alone is no Supabase credential.
    del headers["apikey"]
    refused = scheduler_target.post("/", data=body, headers=headers)
    assert refused.status_code == 401


@pytest.mark.db
def test_apikey_stands_in_only_for_a_google_token(
    project: FakeProject, scheduler_target: Any
) -> None:
    """Supabase clients send both headers: there, Authorization decides, as before."""
    body = project.body.read_bytes()
    key = SECRETS["SUPABASE_SECRET_KEYS"].split(",")[0]
    json_type = {"Content-Type": "application/json"}
    not_google = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJzdXBhYmFzZSJ9.c2ln"  # iss: supabase
    refused = scheduler_target.post(
        "/", data=body, headers={**json_type, "Authorization": not_google, "apikey": key}
    )
    assert refused.status_code == 401
    accepted = scheduler_target.post(
        "/", data=body, headers={**json_type, "Authorization": f"Bearer {key}", "apikey": "x"}
    )
    assert accepted.status_code == 200, accepted.json


# ---------------------------------------------------------------------------------- shellcheck


def test_shellcheck_reports_nothing() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        found = shutil.which("shellcheck")
        assert found, "shellcheck is not installed (requirements-test.txt provides it)"
        shellcheck = Path(found)
    scripts = [DEPLOY, *sorted((ROOT / "scripts").glob("*.sh"))]
    result = subprocess.run(
        [str(shellcheck), "--external-sources", *[str(p.relative_to(ROOT)) for p in scripts]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------------- .gcloudignore


def _gcloudignore_rules() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".gcloudignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        rules.append((negated, line.lstrip("!")))
    return rules


def _glob(pattern: str) -> re.Pattern[str]:
    """A gitignore glob as a regular expression: `*` and `?` stop at `/`, `**` does not."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end + 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


def _ignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """gitignore semantics, as far as this file uses them: the last matching rule wins; a
    pattern with a slash (other than a trailing one) is anchored at the root; a trailing slash
    matches directories only; a directory that ends up ignored hides everything under it."""
    parts = path.split("/")
    for depth in range(1, len(parts) + 1):
        candidate = "/".join(parts[:depth])
        is_dir = depth < len(parts)
        ignored = False
        for negated, pattern in rules:
            core = pattern.rstrip("/")
            if pattern.endswith("/") and not is_dir:
                continue
            target = candidate if "/" in core else parts[depth - 1]
            if _glob(core.lstrip("/")).fullmatch(target):
                ignored = not negated
        if ignored:
            return True
    return False


def test_gcloudignore_uploads_the_code_and_schemas_only() -> None:
    rules = _gcloudignore_rules()
    uploaded = [
        "main.py",
        "requirements.txt",
        "functions/handlers.py",
        "functions/sinks/postgres.py",
        "schemas/batch.schema.json",
        "schemas/events/steps_import.schema.json",
    ]
    left_out = [
        "tests/test_deploy.py",
        "tests/data/x.json",
        "docs/deployment.md",
        "bench/common.py",
        "scripts/dev.sh",
        "supabase/migrations/20241201000000_engagement_events.sql",
        "localdb/cluster.py",
        ".venv/bin/python",
        ".git/HEAD",
        "functions/__pycache__/handlers.cpython-312.pyc",
        ".pytest_cache/v/cache",
        ".mypy_cache/3.11/x.json",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        ".local/state",
        "deploy.sh",
        "README.md",
        "requirements-test.txt",
        "pyproject.toml",
        ".env",
    ]
    for path in uploaded:
        assert not _ignored(path, rules), f"{path} would not be uploaded"
    for path in left_out:
        assert _ignored(path, rules), f"{path} would be uploaded"


def test_every_file_the_functions_read_is_uploaded() -> None:
    """The schemas are read at runtime from schemas/ beside the package: each file must
    upload."""
    rules = _gcloudignore_rules()
    files = [
        ROOT / "main.py",
        ROOT / "requirements.txt",
        *sorted((ROOT / "functions").rglob("*.py")),
        *sorted((ROOT / "schemas").rglob("*.json")),
    ]
    needed = [p.relative_to(ROOT).as_posix() for p in files if "__pycache__" not in p.parts]
    assert len(needed) > 10
    assert [p for p in needed if _ignored(p, rules)] == []
    assert stat.S_ISREG((ROOT / ".gcloudignore").stat().st_mode)
