"""The migrations leave no advisor lint at WARN or ERROR; and each lint query does catch its
problem when one is planted (so a clean result means something)."""

from __future__ import annotations

import pytest

from localdb import advisor
from tests.conftest import Database


def test_migrated_database_has_no_warn_or_error(db: Database) -> None:
    with db.connect() as conn:
        findings = advisor.run(conn)
    assert advisor.blocking(findings) == []


def test_foreign_key_to_auth_users_is_indexed(db: Database) -> None:
    with db.connect() as conn:
        findings = advisor.run(conn)
    assert [f for f in findings if f.lint == "unindexed_foreign_keys"] == []


PLANTED = {
    "auth_rls_initplan": """
        create table public.notes (id int primary key, owner uuid);
        alter table public.notes enable row level security;
        create policy "own notes" on public.notes for select to authenticated using (auth.uid() = owner);
    """,
    "multiple_permissive_policies": """
        create policy "second view policy" on public.engagement_events for select to authenticated
            using ((select auth.uid()) = user_id);
    """,
    "rls_policy_always_true": """
        create policy "anyone inserts" on public.engagement_events for insert to authenticated
            with check (true);
    """,
    "function_search_path_mutable": "create function public.answer() returns int language sql as 'select 42';",
    "security_definer_view": """
        create view public.event_counts as select event_type, count(*) from public.engagement_events group by 1;
        grant select on public.event_counts to authenticated;
    """,
    "anon_security_definer_function_executable": """
        create function public.peek() returns bigint language sql security definer set search_path = ''
            as 'select count(*) from public.engagement_events';
    """,
    "authenticated_security_definer_function_executable": """
        create function public.peek() returns bigint language sql security definer set search_path = ''
            as 'select count(*) from public.engagement_events';
        revoke execute on function public.peek() from public;
        grant execute on function public.peek() to authenticated;
    """,
    "extension_in_public": "create extension pg_trgm with schema public;",
    "duplicate_index": 'create index again_user_timestamp on public.engagement_events (user_id, "timestamp" desc);',
    "unindexed_foreign_keys": """
        create table public.event_notes (id int primary key, event_id uuid references public.engagement_events (id));
        alter table public.event_notes enable row level security;
    """,
    "rls_disabled_in_public": "create table public.open_table (id int primary key);",
    "policy_exists_rls_disabled": "alter table public.engagement_events disable row level security;",
}


@pytest.mark.parametrize("lint", sorted(PLANTED))
def test_lint_catches_a_planted_problem(db: Database, lint: str) -> None:
    with db.connect() as conn:
        assert [f for f in advisor.run(conn) if f.lint == lint] == []
        conn.execute(PLANTED[lint].encode())
        caught = [f for f in advisor.run(conn) if f.lint == lint]
    assert caught, f"{lint} did not notice: {PLANTED[lint]}"


def test_every_lint_of_the_design_is_checked() -> None:
    assert set(PLANTED) == {name for name, _, _ in advisor.LINTS}
