"""Every migration can be rolled back: its down script in supabase/rollback/ undoes it.

On a fresh database of the test cluster, all migrations and the seed are applied, then every
down script in reverse order (each one twice, as an operator may rerun a rollback), after which
the database's catalog must be what it was before the first migration; then all migrations
apply again and leave the catalog a fresh migration leaves.
"""

from __future__ import annotations

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
        where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'""",
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
        where n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'""",
    "type": """
        select n.nspname, t.typname, t.typtype::text
        from pg_type t join pg_namespace n on n.oid = t.typnamespace
        where t.typtype in ('d', 'e', 'r', 'm')
          and n.nspname not like 'pg\\_%' and n.nspname <> 'information_schema'""",
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
    lines = []
    for kind in CATALOG:
        for item in sorted(after[kind] - before[kind], key=str):
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
