-- =============================================================================================
-- Migration: 20241221000000_value_index_with_user
-- Purpose:   idx_engagement_events_value becomes GIN (user_id, value jsonb_path_ops), with the
--            btree_gin extension (trusted: the `postgres` role may create it) in schema
--            `extensions`.
-- Why:       the app searches its own payloads through RLS, e.g. "my events of goal X"
--            (value @> '{"goal_id": ...}'), so every such query also carries RLS's
--            user_id = auth.uid(). The planner cannot estimate containment selectivity and
--            started from the timeline index instead, reading every event of the user and
--            filtering: at 10 million events over 10,000 users that is ~1,000 heap pages and
--            12-15 ms per query (docs/performance.md, "6. Queries at scale"). With user_id in
--            the GIN index both conditions are answered by the index. Containment searches
--            across users (service_role) keep using it: a multicolumn GIN index serves a
--            condition on any subset of its columns equally well.
-- Applies:   as the non-superuser `postgres` role; safe to run twice (the index is rebuilt only
--            while it still has another definition). Where btree_gin cannot be created, the
--            index stays as it is and a notice says so. CREATE INDEX blocks writes while it
--            builds (minutes on a table of 10 million rows): on a large production table build
--            idx_engagement_events_value_new concurrently by hand first, then drop the old
--            index and rename the new one; this file then does nothing more.
-- Rollback:  supabase/rollback/20241221000000_value_index_with_user.down.sql
-- =============================================================================================

do $$
declare
    target constant text :=
        'CREATE INDEX idx_engagement_events_value ON public.engagement_events USING gin (user_id, value jsonb_path_ops)';
begin
    if not exists (select 1 from pg_catalog.pg_extension where extname = 'btree_gin') then
        if not exists (
            select 1 from pg_catalog.pg_available_extensions where name = 'btree_gin'
        ) then
            raise notice 'btree_gin is not available: idx_engagement_events_value stays on '
                '(value jsonb_path_ops)';
            return;
        end if;
        create extension if not exists btree_gin with schema extensions;
    end if;
    if exists (
        select 1
        from pg_catalog.pg_indexes
        where schemaname = 'public'
          and indexname = 'idx_engagement_events_value'
          and indexdef = target
    ) then
        return;
    end if;
    drop index if exists public.idx_engagement_events_value;
    execute target;
    comment on index public.idx_engagement_events_value is
        'Containment searches on the payload (value @> ...), for one user through RLS or '
        'across users.';
end
$$;
