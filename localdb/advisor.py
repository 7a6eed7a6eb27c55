"""The checks of Supabase's database advisor that a table like ours can trip, as SQL.

Supabase's Security and Performance Advisor runs lints over every project. These are this
project's own queries for the lints named in the design, written from their documented
meaning, so that the test suite can prove a migration leaves none at level WARN or ERROR.
API lints are scoped, as the advisor scopes them, to the schemas the Data API exposes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

EXPOSED_SCHEMAS = ("public", "graphql_public")
"""The Data API's default `pgrst.db_schemas` (supabase/config.toml `[api] schemas`)."""

PLATFORM_SCHEMAS = (
    "pg_catalog",
    "information_schema",
    "pg_toast",
    "auth",
    "extensions",
    "storage",
    "realtime",
    "graphql",
    "vault",
    "pgsodium",
)
"""Schemas Supabase itself owns; their functions are not the project's to fix."""


@dataclass(frozen=True)
class Finding:
    lint: str
    level: str
    object: str
    detail: str


def _security_definer_executable(role: str) -> tuple[str, str, str]:
    """The lint for SECURITY DEFINER functions in exposed schemas that `role` may execute."""
    return (
        f"{role}_security_definer_function_executable",
        "WARN",
        r"""
        select format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
               'security definer function is executable by ROLE through the API'
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where p.prosecdef and n.nspname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[])
          and has_function_privilege('ROLE', p.oid, 'execute')
        """.replace("ROLE", role),
    )


# Each lint: (name, level, query). Queries take string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[] and string_to_array(current_setting('advisor.platform_schemas'), ',')::name[] and return rows of
# (object, detail).
LINTS: tuple[tuple[str, str, str], ...] = (
    (
        "auth_rls_initplan",
        "WARN",
        # Every call of auth.<fn>() or current_setting() in a policy must sit inside a
        # scalar subquery, "(select auth.uid())", so it runs once per statement, not per row.
        r"""
        select format('%I.%I policy %L', schemaname, tablename, policyname),
               'calls auth.<function>() or current_setting() per row; wrap it in (select ...)'
        from pg_policies, lateral (select coalesce(qual, '') || ' ' || coalesce(with_check, '') as expr) e
        where schemaname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[])
          and regexp_count(e.expr, '(auth\.[a-z_]+\(\)|current_setting\()')
              > regexp_count(e.expr, 'SELECT (auth\.[a-z_]+\(\)|current_setting\()')
        """,
    ),
    (
        "multiple_permissive_policies",
        "WARN",
        r"""
        with expanded as (
            select p.schemaname, p.tablename, p.policyname, r.role, a.action
            from pg_policies p
            cross join lateral unnest(
                case when 'public' = any(p.roles)
                     then array['anon', 'authenticated', 'authenticator', 'service_role']::name[]
                     else p.roles end) as r(role)
            cross join lateral unnest(
                case when p.cmd = 'ALL' then array['SELECT', 'INSERT', 'UPDATE', 'DELETE']
                     else array[p.cmd] end) as a(action)
            where p.permissive = 'PERMISSIVE' and p.schemaname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[])
        )
        select format('%I.%I', schemaname, tablename),
               format('role %s has %s permissive %s policies: %s', role, count(*), action,
                      string_agg(policyname, ', ' order by policyname))
        from expanded
        group by schemaname, tablename, role, action
        having count(*) > 1
        """,
    ),
    (
        "rls_policy_always_true",
        "WARN",
        r"""
        select format('%I.%I policy %L', schemaname, tablename, policyname),
               format('%s policy for %s is always true', cmd, array_to_string(roles, ', '))
        from pg_policies
        where schemaname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[])
          and cmd <> 'SELECT'
          and roles && array['anon', 'authenticated', 'public']::name[]
          and (coalesce(qual, '') in ('true', '(true)') or coalesce(with_check, '') in ('true', '(true)'))
        """,
    ),
    (
        "function_search_path_mutable",
        "WARN",
        r"""
        select format('%I.%I(%s)', n.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
               'search_path is not set on the function'
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        where n.nspname <> all(string_to_array(current_setting('advisor.platform_schemas'), ',')::name[])
          and n.nspname not like 'pg\_%'
          and not exists (select 1 from pg_depend d
                          where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
          and not exists (select 1 from unnest(coalesce(p.proconfig, '{}')) c where c like 'search\_path=%')
        """,
    ),
    (
        "security_definer_view",
        "ERROR",
        r"""
        select format('%I.%I', n.nspname, c.relname),
               'view runs with its owner''s rights (set security_invoker = true)'
        from pg_class c
        join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('v', 'm')
          and n.nspname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[])
          and not exists (select 1 from pg_depend d
                          where d.classid = 'pg_class'::regclass and d.objid = c.oid and d.deptype = 'e')
          and not coalesce(c.reloptions && array['security_invoker=true', 'security_invoker=on',
                                                  'security_invoker=1'], false)
          and (has_table_privilege('anon', c.oid, 'select')
               or has_table_privilege('authenticated', c.oid, 'select'))
        """,
    ),
    *(_security_definer_executable(role) for role in ("anon", "authenticated")),
    (
        "extension_in_public",
        "WARN",
        r"""
        select e.extname::text, 'extension installed in schema public'
        from pg_extension e join pg_namespace n on n.oid = e.extnamespace
        where n.nspname = 'public'
        """,
    ),
    (
        "duplicate_index",
        "WARN",
        r"""
        select format('%s', i.indrelid::regclass),
               'identical indexes: ' || string_agg(i.indexrelid::regclass::text, ', ' order by i.indexrelid::regclass::text)
        from pg_index i
        join pg_class c on c.oid = i.indrelid
        join pg_namespace n on n.oid = c.relnamespace
        where n.nspname <> all(string_to_array(current_setting('advisor.platform_schemas'), ',')::name[])
        group by i.indrelid, i.indkey::text, i.indclass::text, i.indcollation::text, i.indoption::text,
                 coalesce(pg_get_expr(i.indexprs, i.indrelid), ''),
                 coalesce(pg_get_expr(i.indpred, i.indrelid), '')
        having count(*) > 1
        """,
    ),
    (
        "unindexed_foreign_keys",
        "INFO",
        r"""
        select format('%s constraint %I', con.conrelid::regclass, con.conname),
               'no index starts with the foreign key''s columns'
        from pg_constraint con
        join pg_class c on c.oid = con.conrelid
        join pg_namespace n on n.oid = c.relnamespace
        where con.contype = 'f'
          and n.nspname <> all(string_to_array(current_setting('advisor.platform_schemas'), ',')::name[])
          and not exists (
              select 1 from pg_index i
              where i.indrelid = con.conrelid
                and (string_to_array(i.indkey::text, ' ')::int2[])[1:cardinality(con.conkey)]
                    = con.conkey
          )
        """,
    ),
    (
        "rls_disabled_in_public",
        "ERROR",
        r"""
        select format('%I.%I', n.nspname, c.relname), 'table is exposed by the API without RLS'
        from pg_class c join pg_namespace n on n.oid = c.relnamespace
        where c.relkind in ('r', 'p') and n.nspname = any(string_to_array(current_setting('advisor.exposed_schemas'), ',')::name[]) and not c.relrowsecurity
        """,
    ),
    (
        "policy_exists_rls_disabled",
        "ERROR",
        r"""
        select format('%I.%I', schemaname, tablename), 'policies exist but RLS is disabled'
        from pg_policies p
        join pg_class c on c.oid = format('%I.%I', p.schemaname, p.tablename)::regclass
        where not c.relrowsecurity
        group by schemaname, tablename
        """,
    ),
)


def run(
    conn: psycopg.Connection[Any], *, exposed: Sequence[str] = EXPOSED_SCHEMAS
) -> list[Finding]:
    """Every finding of every lint in the database `conn` is connected to."""
    conn.execute(
        "select set_config('advisor.exposed_schemas', %s, false),"
        " set_config('advisor.platform_schemas', %s, false)",
        (",".join(exposed), ",".join(PLATFORM_SCHEMAS)),
    )
    findings: list[Finding] = []
    for name, level, query in LINTS:
        for obj, detail in conn.execute(query.encode()).fetchall():
            findings.append(Finding(name, level, str(obj), str(detail)))
    return findings


def blocking(findings: Sequence[Finding]) -> list[Finding]:
    """The findings at level WARN or ERROR, which the migrations must never leave."""
    return [f for f in findings if f.level in ("WARN", "ERROR")]
