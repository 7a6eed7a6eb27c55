"""The local database is prepared the way a Supabase database is, and the migration and seed
behave on it as they must on a real project."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from localdb import cluster as localcluster
from localdb.api_roles import request_as
from tests.conftest import Database

MIGRATION = localcluster.MIGRATIONS / "20241201000000_engagement_events.sql"
ANA = "a1a1a1a1-0000-4000-8000-000000000001"


def test_roles_have_supabases_attributes(db: Database) -> None:
    with db.connect() as conn:
        rows = conn.execute(
            "select rolname, rolsuper, rolcanlogin, rolinherit, rolbypassrls from pg_roles"
            " where rolname in ('postgres', 'anon', 'authenticated', 'service_role', 'authenticator')"
        ).fetchall()
        members = conn.execute(
            "select r.rolname from pg_auth_members m join pg_roles r on r.oid = m.roleid"
            " join pg_roles u on u.oid = m.member where u.rolname = 'authenticator'"
        ).fetchall()
    attributes = {name: (sup, login, inherit, bypass) for name, sup, login, inherit, bypass in rows}
    assert attributes == {
        "postgres": (False, True, True, True),
        "anon": (False, False, False, False),
        "authenticated": (False, False, False, False),
        "service_role": (False, False, False, True),
        "authenticator": (False, True, False, False),
    }
    assert {m[0] for m in members} == {"anon", "authenticated", "service_role"}


def test_migration_ran_as_non_superuser_postgres(db: Database) -> None:
    with db.connect() as conn:
        owner = conn.execute(
            "select tableowner from pg_tables where tablename = 'engagement_events'"
        ).fetchone()
        superuser = conn.execute(
            "select rolsuper from pg_roles where rolname = current_user"
        ).fetchone()
    assert owner == ("postgres",)
    assert superuser == (False,)


def test_cluster_is_ready_for_logical_decoding_and_has_extensions(db: Database) -> None:
    with db.connect() as conn:
        assert conn.execute("show wal_level").fetchone() == ("logical",)
        assert conn.execute(
            "select n.nspname from pg_extension e join pg_namespace n on n.oid = e.extnamespace"
            " where e.extname = 'pgcrypto'"
        ).fetchone() == ("extensions",)
        # pgcrypto resolves through the search_path Supabase gives postgres.
        assert conn.execute("select length(gen_salt('bf'))").fetchone() == (29,)
        assert conn.execute(
            "select pubowner::regrole::text from pg_publication where pubname = 'supabase_realtime'"
        ).fetchone() == ("postgres",)


def test_replication_slots_may_decode_with_wal2json(cluster: localcluster.Cluster) -> None:
    """Realtime's plugin is allowed on every minor release, old (no allow-list) or new."""
    with cluster.admin() as admin:
        known = admin.execute(
            "select count(*) from pg_settings where name = 'output_plugin_libraries'"
        ).fetchone()
        if known == (1,):
            allowed = admin.execute("show output_plugin_libraries").fetchone()
            assert allowed is not None
            assert {part.strip() for part in str(allowed[0]).split(",")} == {
                "pgoutput",
                "test_decoding",
                "wal2json",
            }
        admin.execute("select pg_create_logical_replication_slot('wal2json_allowed', 'wal2json')")
        admin.execute("select pg_drop_replication_slot('wal2json_allowed')")


def test_settings_of_newer_minor_releases_are_given_only_to_servers_that_know_them(
    tmp_path: Path,
) -> None:
    """A server older than 15.19 refuses to start with output_plugin_libraries set."""
    real = localcluster.find_bindir()
    older = tmp_path / "older"
    older.mkdir()
    described = subprocess.run(
        [str(real / "postgres"), "--describe-config"], capture_output=True, text=True, check=True
    ).stdout
    without = "".join(
        line
        for line in described.splitlines(keepends=True)
        if not line.startswith("output_plugin_libraries\t")
    )
    (older / "described.txt").write_text(without)
    fake = older / "postgres"
    fake.write_text(f'#!/bin/sh\nexec cat "{older / "described.txt"}"\n')
    fake.chmod(0o755)
    assert localcluster.version_settings(older) == []


@pytest.mark.parametrize(
    ("claims_setting", "expected_uid"),
    [
        ("request.jwt.claims", ANA),
        ("request.jwt.claim.sub", ANA),  # the older per-claim setting GoTrue still honours
    ],
)
def test_auth_helpers_read_the_request_claims(
    db: Database, claims_setting: str, expected_uid: str
) -> None:
    with db.connect(autocommit=False) as conn:
        value = json.dumps({"sub": ANA, "role": "authenticated", "email": "ana.seed@example.com"})
        if claims_setting == "request.jwt.claim.sub":
            value = ANA
        conn.execute("select set_config(%s, %s, true)", (claims_setting, value))
        uid = conn.execute("select auth.uid()::text").fetchone()
        assert uid == (expected_uid,)
        if claims_setting == "request.jwt.claims":
            assert conn.execute("select auth.role(), auth.jwt() ->> 'email'").fetchone() == (
                "authenticated",
                "ana.seed@example.com",
            )
        conn.rollback()
        assert conn.execute("select auth.uid(), auth.role(), auth.jwt()").fetchone() == (
            None,
            None,
            None,
        )


def test_migration_can_be_applied_twice(db: Database) -> None:
    db.cluster.run_sql_file(MIGRATION, dbname=db.name)
    with db.connect() as conn:
        policies = conn.execute(
            "select count(*) from pg_policies where tablename = 'engagement_events'"
        ).fetchone()
        events = conn.execute("select count(*) from public.engagement_events").fetchone()
    assert policies == (4,)
    assert events == (5000,)


def test_migration_applies_where_the_realtime_publication_is_missing(
    cluster: localcluster.Cluster,
) -> None:
    cluster.prepare_database("no_realtime", migrations=[], seed=None)
    try:
        with cluster.connect(localcluster.SUPERUSER, "no_realtime") as sup:
            sup.execute("drop publication supabase_realtime")
        cluster.run_sql_file(MIGRATION, dbname="no_realtime")
        with cluster.connect("postgres", "no_realtime") as conn:
            assert conn.execute(
                "select to_regclass('public.engagement_events')::text"
            ).fetchone() == ("engagement_events",)
    finally:
        cluster.drop("no_realtime")


def test_older_projects_default_grants_are_revoked(cluster: localcluster.Cluster) -> None:
    """Older Supabase projects grant every new public table to the API roles by default."""
    cluster.prepare_database("legacy_grants", seed=None, legacy_default_grants=True)
    try:
        with cluster.connect("postgres", "legacy_grants") as conn:
            privileges = conn.execute(
                "select r, p, has_table_privilege(r, 'public.engagement_events', p)"
                " from unnest(array['anon', 'authenticated']) r,"
                " unnest(array['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) p"
            ).fetchall()
        granted = {(role, priv) for role, priv, has in privileges if has}
        assert granted == {("authenticated", "SELECT")}
    finally:
        cluster.drop("legacy_grants")


def test_seed_is_rerunnable(db: Database) -> None:
    db.cluster.run_sql_file(localcluster.SEED, dbname=db.name)
    with db.connect() as conn:
        assert conn.execute("select count(*) from auth.users").fetchone() == (5,)
        assert conn.execute("select count(*) from public.engagement_events").fetchone() == (5000,)


def test_seed_spans_months_zones_types_and_payloads(db: Database) -> None:
    with db.connect() as conn:
        types = conn.execute(
            "select event_type, count(distinct user_id) from public.engagement_events group by 1"
        ).fetchall()
        months = conn.execute(
            "select count(distinct date_trunc('month', timestamp)) from public.engagement_events"
        ).fetchone()
        zones = conn.execute("select raw_user_meta_data ->> 'time_zone' from auth.users").fetchall()
        payload_shapes = conn.execute(
            "select count(distinct (select array_agg(k order by k) from jsonb_object_keys(value) k))"
            " from public.engagement_events"
        ).fetchone()
    assert dict(types) == {"app_open": 5, "goal_complete": 5, "steps_import": 5}
    assert months is not None
    assert months[0] >= 9
    assert {z[0] for z in zones} >= {"America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"}
    assert payload_shapes is not None
    assert payload_shapes[0] >= 4


@pytest.mark.parametrize(
    ("user", "before_change", "after_change", "utc_hour_before", "utc_hour_after"),
    [
        # New York: EST (UTC-5) until 10 March 2024, then EDT (UTC-4); the 23:00 import moves.
        (ANA, "2024-03-09", "2024-03-11", 4, 3),
        # Lord Howe: +11 until 7 April 2024, then +10:30: a 30-minute shift.
        ("d4d4d4d4-0000-4000-8000-000000000004", "2024-04-06", "2024-04-08", 12, 12),
    ],
)
def test_seed_keeps_local_wall_clock_across_dst(
    db: Database,
    user: str,
    before_change: str,
    after_change: str,
    utc_hour_before: int,
    utc_hour_after: int,
) -> None:
    with db.connect() as conn:
        # The import that covers a local day is taken at 23:00 local time; find it by UTC date.
        rows = conn.execute(
            "select (timestamp at time zone (select raw_user_meta_data ->> 'time_zone' from auth.users where id = %s))::text,"
            " to_char(timestamp at time zone 'UTC', 'HH24:MI')"
            " from public.engagement_events where user_id = %s and event_type = 'steps_import'"
            " and (timestamp at time zone (select raw_user_meta_data ->> 'time_zone' from auth.users where id = %s))::date"
            " in (%s::date, %s::date) order by timestamp",
            (user, user, user, before_change, after_change),
        ).fetchall()
    local_times = [r[0][11:16] for r in rows]
    utc_times = [r[1] for r in rows]
    assert local_times == ["23:00", "23:00"]
    assert utc_times[0] != utc_times[1], "the UTC time must move with the DST change"
    assert int(utc_times[0][:2]) == utc_hour_before
    assert int(utc_times[1][:2]) == utc_hour_after


def test_seeded_user_reads_only_their_events_through_the_api_role(db: Database) -> None:
    with (
        psycopg.connect(db.cluster.dsn("authenticator", db.name)) as conn,
        request_as(conn, "authenticated", ANA),
    ):
        owners = conn.execute(
            "select distinct user_id::text from public.engagement_events"
        ).fetchall()
    assert owners == [(ANA,)]


@pytest.mark.db  # starts a cluster of its own
def test_cluster_stops_cleanly_and_leaves_nothing_behind() -> None:
    db_cluster = localcluster.start()
    pid, basedir = db_cluster.process.pid, db_cluster.basedir
    db_cluster.stop()
    assert db_cluster.process.poll() is not None
    assert not basedir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _printed_commands(text: str) -> list[str]:
    """The shell commands of the printed banner (indented lines; backslash continuations
    joined), from the first `export TOKEN=` on."""
    start = text.index("  export TOKEN=")
    commands: list[str] = []
    pending = ""
    for line in text[start:].splitlines():
        if not line.startswith("  ") and not pending:
            continue
        pending += line.strip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        commands.append(pending)
        pending = ""
    return commands


@pytest.mark.db  # python -m localdb starts a cluster
def test_local_run_command_serves_the_seeded_database_and_cleans_up() -> None:
    """What the README's first command runs after setup: `python -m localdb`."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localdb"],
        cwd=localcluster.ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    seen: list[str] = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(seen)
        # The readiness checks of the function servers are not requests: nothing logs an
        # answer (405, 401) before anyone has called.
        assert "answered" not in text, text
        match = re.search(r"DATABASE_URL=(\S+)", text)
        assert match, text
        with psycopg.connect(match[1]) as conn:
            assert conn.execute("select count(*) from public.engagement_events").fetchone() == (
                5000,
            )
        # Every printed command works as printed, in one shell, in the order printed.
        commands = _printed_commands(text)
        assert commands[0].startswith("export TOKEN="), commands
        curls = [c for c in commands if c.startswith("curl ")]
        psqls = [c for c in commands if " -c " in c and "psql" in c]
        assert len(curls) == 4, commands
        assert len(psqls) == 1, commands
        answers: list[str] = []
        for curl in curls:
            ran = subprocess.run(
                ["bash", "-c", f"{commands[0]}\n{curl}"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            assert ran.stdout.endswith("}\n"), (curl, ran.stdout)  # ends on a line of its own
            answers.append(ran.stdout)
        imported, checked, converted, in_gap = (json.loads(a) for a in answers)
        assert imported["inserted"] == 2, imported
        assert checked["valid"] is True, checked
        assert checked["role"] == "service_role", checked
        assert converted["utc"] == "2024-03-10T11:30:00Z", converted
        assert in_gap["error"] == "nonexistent_local_time", in_gap
        arrived = subprocess.run(
            ["bash", "-c", psqls[0]], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        assert "(2 rows)" in arrived, arrived
        with psycopg.connect(match[1]) as conn:
            assert conn.execute("select count(*) from public.engagement_events").fetchone() == (
                5002,
            )
    finally:
        process.send_signal(signal.SIGINT)
        remaining, _ = process.communicate(timeout=60)
    assert process.returncode == 0
    assert "Stopped; local database removed." in remaining
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(match[1], connect_timeout=2)


def test_no_path_of_this_machine_is_in_the_sql() -> None:
    for path in [
        *Path(localcluster.ROOT / "supabase").rglob("*.sql"),
        *localcluster.HERE.glob("*.sql"),
    ]:
        text = path.read_text()
        assert "/work/" not in text, path
        assert "/home/" not in text, path


def test_every_seeded_event_passes_the_functions_validation(db: Database) -> None:
    """The seed is data the functions would accept: same payload schemas, same rules."""
    from datetime import UTC, datetime

    from functions import validation

    with db.connect() as conn:
        rows = conn.execute(
            "select user_id::text, event_type, to_char(timestamp at time zone 'UTC',"
            ' \'YYYY-MM-DD"T"HH24:MI:SS"Z"\'), value from public.engagement_events'
        ).fetchall()
    problems = []
    for index, (user, kind, moment, value) in enumerate(rows):
        outcome = validation.normalise_event(
            {"user_id": user, "event_type": kind, "timestamp": moment, "value": value},
            index,
            default_timezone=None,
            received_at=datetime.now(UTC),
        )
        if isinstance(outcome, validation.Rejection):
            problems.append((kind, [e.as_dict() for e in outcome.errors]))
    assert problems == [], problems[:3]
