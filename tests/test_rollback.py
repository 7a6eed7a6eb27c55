"""Every migration can be rolled back: its down script in supabase/rollback/ undoes it.

On a fresh database of the test cluster, all migrations and the seed are applied, then every
down script in reverse order (each one twice, as an operator may rerun a rollback), after which
the database's catalog must be what it was before the first migration (an extension a
migration installed may stay); then all migrations apply again and leave the catalog a fresh
migration leaves.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from localdb import cluster as localcluster
from localdb.cluster import MIGRATIONS, ROOT, SEED, SUPERUSER

ROLLBACK = ROOT / "supabase" / "rollback"
CONFIRM = "select set_config('engagement.confirm_drop', 'engagement_events', true)"
"""The confirmation the down script of 20241201 asks for before it drops the table."""

# What a migration can leave behind, by name, so that a difference reads as a sentence.
CATALOG: dict[str, str] = {
    "schema": """
        select nspname, coalesce(nspacl::text, '') from pg_namespace
        where nspname not like 'pg\\_%' and nspname <> 'information_schema'""",
    "relation": """
        select n.nspname, c.relname, c.relkind::text, coalesce(c.relacl::text, ''),
               c.relrowsecurity::text
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
          and not exists (select 1 from pg_depend d where d.classid = 'pg_class'::regclass
                          and d.objid = c.oid and d.deptype = 'e')""",
    "column": """
        select c.oid::regclass::text, a.attname, format_type(a.atttypid, a.atttypmod),
               coalesce(a.attacl::text, '')
        from pg_attribute a join pg_class c on c.oid = a.attrelid
        join pg_namespace n on n.oid = c.relnamespace
        where a.attnum > 0 and not a.attisdropped
          and n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'""",
    "constraint": """
        select conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        from pg_constraint
        where connamespace::regnamespace::text not like 'pg\\_%'
          and connamespace::regnamespace::text <> 'information_schema'""",
    "function": """
        select n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               coalesce(p.proacl::text, '')
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
          and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass
                          and d.objid = p.oid and d.deptype = 'e')""",
    "type": """
        select n.nspname, t.typname, t.typtype::text
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        where t.typtype in ('d', 'e', 'r', 'm')
          and n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'
          and not exists (select 1 from pg_depend d where d.classid = 'pg_type'::regclass
                          and d.objid = t.oid and d.deptype = 'e')""",
    "policy": "select schemaname, tablename, policyname, cmd, roles::text from pg_policies",
    "trigger": "select tgrelid::regclass::text, tgname from pg_trigger where not tgisinternal",
    "publication table": "select pubname, schemaname, tablename from pg_publication_tables",
    "extension": "select extname, extnamespace::regnamespace::text from pg_extension",
    "default privilege": """
        select defaclrole::regrole::text, defaclnamespace::text, defaclobjtype::text,
               defaclacl::text from pg_default_acl""",
}

Snapshot = dict[str, set[tuple[Any, ...]]]


def snapshot(cluster: localcluster.Cluster, dbname: str) -> Snapshot:
    """The database's schema objects, privileges and policies, by name (no data)."""
    with cluster.connect(SUPERUSER, dbname) as conn:
        return {kind: set(conn.execute(query).fetchall()) for kind, query in CATALOG.items()}


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What `after` has that `before` has not, and the reverse. An extension a migration
    installed may stay after its rollback (the down scripts keep extensions, which other code
    may use by then); the objects inside an extension are never compared."""
    lines = []
    for kind in CATALOG:
        for item in sorted(after[kind] - before[kind], key=str):
            if kind == "extension":
                continue
            lines.append(f"left behind: {kind} {item}")
        for item in sorted(before[kind] - after[kind], key=str):
            lines.append(f"missing: {kind} {item}")
    return lines


def migrations() -> list[Path]:
    return sorted(MIGRATIONS.glob("*.sql"))


def down_script(migration: Path) -> Path:
    return ROLLBACK / f"{migration.stem}.down.sql"


def missing_down_scripts() -> list[str]:
    return [m.name for m in migrations() if not down_script(m).exists()]


def run_down(cluster: localcluster.Cluster, dbname: str, path: Path) -> None:
    """One down script in one transaction as `postgres`, confirmed as the runbook says."""
    with cluster.connect("postgres", dbname, autocommit=False) as conn:
        conn.execute(CONFIRM)
        conn.execute(path.read_text().encode())


def engagement_objects(cluster: localcluster.Cluster, dbname: str) -> list[str]:
    """Anything still named for this project, anywhere in the database."""
    with cluster.connect(SUPERUSER, dbname) as conn:
        rows = conn.execute(
            """
            select 'relation ' || c.oid::regclass::text from pg_class c
            where c.relname ilike '%engagement%'
            union all
            select 'function ' || p.oid::regprocedure::text from pg_proc p
            where p.proname ilike '%engagement%' or p.proname ilike '%service_jwt%'
            union all
            select 'policy ' || policyname || ' on ' || schemaname || '.' || tablename
            from pg_policies where policyname ilike '%engagement%' or tablename ilike '%engagement%'
            union all
            select 'trigger ' || tgname from pg_trigger where tgname ilike '%engagement%'
            union all
            select 'publication table ' || tablename from pg_publication_tables
            where tablename ilike '%engagement%'
            union all
            select 'schema ' || nspname from pg_namespace where nspname in ('private', 'monitoring')
            """
        ).fetchall()
    return sorted(str(row[0]) for row in rows)


def test_every_migration_has_a_down_script() -> None:
    missing = missing_down_scripts()
    assert missing == [], (
        "these migrations have no down script supabase/rollback/<name>.down.sql: "
        + ", ".join(missing)
    )
    orphans = [
        p.name
        for p in sorted(ROLLBACK.glob("*.down.sql"))
        if not (MIGRATIONS / p.name.replace(".down.sql", ".sql")).exists()
    ]
    assert orphans == [], "down scripts without a migration: " + ", ".join(orphans)


def test_the_deployment_document_says_what_each_rollback_loses() -> None:
    text = (ROOT / "docs" / "deployment.md").read_text()
    section = text[
        text.index("## Rollback of each migration") : text.index("## Backup and restore")
    ]
    undocumented = [m.stem for m in migrations() if f"| {m.stem} |" not in section]
    assert undocumented == [], (
        "docs/deployment.md, 'Rollback of each migration', has no row for: "
        + ", ".join(undocumented)
    )


@pytest.mark.db
def test_down_scripts_undo_every_migration_and_the_migrations_apply_again(
    cluster: localcluster.Cluster,
) -> None:
    missing = missing_down_scripts()
    assert missing == [], "cannot roll back, no down script for: " + ", ".join(missing)
    cluster.prepare_database("rollback_baseline", migrations=[], seed=None)
    cluster.prepare_database("rollback_target")
    try:
        before = snapshot(cluster, "rollback_baseline")
        migrated = snapshot(cluster, "rollback_target")
        assert differences(before, migrated), "the migrations changed nothing?"
        with cluster.connect("postgres", "rollback_target") as conn:
            seeded = conn.execute("select count(*) from public.engagement_events").fetchone()
        assert seeded is not None
        assert isinstance(seeded[0], int)
        assert seeded[0] > 0

        for migration in reversed(migrations()):
            script = down_script(migration)
            if migration.name.startswith("20241201000000_"):
                # Without the confirmation, the destructive down script changes nothing.
                with (
                    pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState),
                    cluster.connect("postgres", "rollback_target", autocommit=False) as c,
                ):
                    c.execute(script.read_text().encode())
                with cluster.connect("postgres", "rollback_target") as conn:
                    assert conn.execute(
                        "select to_regclass('public.engagement_events')"
                    ).fetchone() == ("engagement_events",)
            for attempt in (1, 2):
                try:
                    run_down(cluster, "rollback_target", script)
                except psycopg.Error as exc:
                    pytest.fail(f"{script.name} failed on run {attempt}: {exc}")

        left = engagement_objects(cluster, "rollback_target")
        assert left == [], "the down scripts left engagement objects: " + "; ".join(left)
        rolled_back = snapshot(cluster, "rollback_target")
        assert differences(before, rolled_back) == []

        for migration in migrations():
            cluster.run_sql_file(migration, dbname="rollback_target")
        cluster.run_sql_file(SEED, dbname="rollback_target")
        assert differences(migrated, snapshot(cluster, "rollback_target")) == []
        with cluster.connect("postgres", "rollback_target") as conn:
            assert (
                conn.execute("select count(*) from public.engagement_events").fetchone() == seeded
            )
    finally:
        cluster.drop("rollback_target")
        cluster.drop("rollback_baseline")


# ------------------------------------------------------------------------- backup and restore

DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
FINGERPRINT = """
    select count(*), md5(coalesce(string_agg(
        concat_ws('|', id, user_id, "timestamp", event_type, value, is_deleted), ',' order by id), ''))
    from public.engagement_events"""


def doc_block(after: str, language: str) -> str:
    """The first ```language block of docs/deployment.md after the line containing `after`."""
    text = DEPLOYMENT_DOC.read_text()
    start = text.index(after)
    opening = text.index(f"```{language}\n", start) + len(f"```{language}\n")
    return text[opening : text.index("```", opening)]


def run_doc_shell(block: str, *, cluster: localcluster.Cluster, dbname: str, cwd: Path) -> None:
    """Run a shell block of the document against the local database (its DIRECT_URL)."""
    script = "\n".join(
        line for line in block.splitlines() if not line.startswith("export DIRECT_URL=")
    )
    env = {
        "PATH": f"{cluster.bindir}{os.pathsep}{os.environ['PATH']}",
        "DIRECT_URL": cluster.url("postgres", dbname),
        "HOME": str(cwd),
    }
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, f"{script}\n{result.stdout}\n{result.stderr}"


def fingerprint(cluster: localcluster.Cluster, dbname: str) -> tuple[Any, ...]:
    with cluster.connect("postgres", dbname) as conn:
        row = conn.execute(FINGERPRINT).fetchone()
    assert row is not None
    return tuple(row)


@pytest.mark.db
def test_the_documented_dump_brings_every_event_back_after_the_table_is_rolled_back(
    cluster: localcluster.Cluster, tmp_path: Path
) -> None:
    cluster.prepare_database("restore_target")
    try:
        before = fingerprint(cluster, "restore_target")
        assert before[0] > 0
        run_doc_shell(
            doc_block("**A table dump**", "sh"),
            cluster=cluster,
            dbname="restore_target",
            cwd=tmp_path,
        )
        (dump,) = tmp_path.glob("engagement-*.dump")

        for migration in reversed(migrations()):
            run_down(cluster, "restore_target", down_script(migration))
        with cluster.connect("postgres", "restore_target") as conn:
            assert conn.execute("select to_regclass('public.engagement_events')").fetchone() == (
                None,
            )
        for migration in migrations():
            cluster.run_sql_file(migration, dbname="restore_target")
        assert fingerprint(cluster, "restore_target")[0] == 0

        restore = doc_block("**Restore into an empty table**", "sh")
        run_doc_shell(
            restore.replace("$stamp", dump.name.removeprefix("engagement-").removesuffix(".dump")),
            cluster=cluster,
            dbname="restore_target",
            cwd=tmp_path,
        )
        assert fingerprint(cluster, "restore_target") == before
    finally:
        cluster.drop("restore_target")


@pytest.mark.db
def test_the_documented_merge_restores_deleted_rows_and_skips_erased_users(
    cluster: localcluster.Cluster, tmp_path: Path
) -> None:
    cluster.prepare_database("merge_target")
    try:
        before = fingerprint(cluster, "merge_target")
        export = doc_block("where `engagement_events.csv` was written", "sh")
        run_doc_shell(export, cluster=cluster, dbname="merge_target", cwd=tmp_path)
        assert (tmp_path / "engagement_events.csv").exists()

        with cluster.connect("postgres", "merge_target") as conn:
            lost = conn.execute(
                "delete from public.engagement_events where event_type = 'app_open'"
                " and user_id = 'a1a1a1a1-0000-4000-8000-000000000001'"
            ).rowcount
            # A user erased after the backup: the cascade deletes their events.
            erased = conn.execute(
                "select count(*) from public.engagement_events"
                " where user_id = 'b2b2b2b2-0000-4000-8000-000000000002'"
            ).fetchone()
            conn.execute("delete from auth.users where id = 'b2b2b2b2-0000-4000-8000-000000000002'")
        assert lost > 0
        assert erased is not None
        assert isinstance(erased[0], int)
        assert erased[0] > 0

        merge = doc_block("**Merge into a table that has rows**", "sql")
        (tmp_path / "merge.sql").write_text(merge)
        run_doc_shell(
            'psql "$DIRECT_URL" -X -v ON_ERROR_STOP=1 -f merge.sql',
            cluster=cluster,
            dbname="merge_target",
            cwd=tmp_path,
        )
        after = fingerprint(cluster, "merge_target")
        assert after[0] == before[0] - erased[0]
        with cluster.connect("postgres", "merge_target") as conn:
            back = conn.execute(
                "select count(*) from public.engagement_events where event_type = 'app_open'"
                " and user_id = 'a1a1a1a1-0000-4000-8000-000000000001'"
            ).fetchone()
            gone = conn.execute(
                "select count(*) from public.engagement_events"
                " where user_id = 'b2b2b2b2-0000-4000-8000-000000000002'"
            ).fetchone()
        assert back == (lost,)
        assert gone == (0,)
    finally:
        cluster.drop("merge_target")
