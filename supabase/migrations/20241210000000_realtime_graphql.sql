-- =============================================================================================
-- Migration: 20241210000000_realtime_graphql
-- Purpose:   how engagement_events reaches clients beside the REST Data API:
--            * Realtime postgres_changes: the table is in the supabase_realtime publication
--              (20241201 adds it; this file only checks it) and each change reaches only the
--              subscribers whose SELECT policy admits the row, i.e. the row's owner;
--            * Realtime broadcast: private channels with the topic `engagement:<user id>`
--              may be received only by that user, and sent on only by the backend
--              (service_role), when the project has Realtime Authorization (realtime.messages);
--            * GraphQL (pg_graphql): the table's GraphQL settings. Exposure follows the grants
--              of 20241201: authenticated sees and writes through RLS exactly what it may
--              through REST; anon has no privilege, so GraphQL shows anon nothing.
-- Applies:   as `postgres`, with or without the supabase_realtime publication, the realtime
--            schema and the pg_graphql extension: whatever is missing is skipped with a notice.
--            It does not enable pg_graphql or turn on introspection; both are project-wide
--            decisions, described in docs/api-usage.md ("GraphQL"). Safe to run twice.
-- Rollback:  supabase/rollback/20241210000000_realtime_graphql.down.sql
-- =============================================================================================

-- Realtime postgres_changes ------------------------------------------------------------------
-- Realtime checks every change against the subscriber's role and JWT claims with the table's
-- SELECT policy ("Users can view own events": (select auth.uid()) = user_id), so an INSERT or
-- UPDATE reaches only the row's owner. DELETE events skip RLS (Postgres cannot check a row
-- that is gone): with REPLICA IDENTITY DEFAULT they carry only the primary key, never user_id
-- or the payload. FULL would send whole deleted rows to every subscriber of the table, so the
-- identity is pinned to DEFAULT here. Users never delete (soft delete is an UPDATE).
alter table public.engagement_events replica identity default;

do $$
begin
    if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
        raise notice 'publication supabase_realtime does not exist: Realtime postgres_changes '
            'will not deliver engagement_events until it exists and the table is added '
            '(migration 20241201 adds it when run again)';
    elsif not exists (
        select 1
        from pg_publication_tables
        where pubname = 'supabase_realtime'
          and schemaname = 'public'
          and tablename = 'engagement_events'
    ) then
        raise notice 'engagement_events is not in the supabase_realtime publication: run '
            '"alter publication supabase_realtime add table public.engagement_events"';
    end if;
end
$$;

-- Realtime broadcast on private per-user channels ---------------------------------------------
-- Realtime Authorization evaluates RLS on realtime.messages when a client joins a private
-- channel, with realtime.topic() returning the channel's topic. Topics `engagement:<uid>`
-- belong to one user:
--   * permissive: a signed-in user may receive broadcast and presence on their own topic;
--   * restrictive: no other policy of the project (for example a broad "authenticated may
--     listen to everything") can open another user's engagement topic, or let a client send
--     on any engagement topic. Only the backend (service_role, or realtime.send() from the
--     database) broadcasts there.
-- Skipped where the realtime schema is missing (a plain PostgreSQL, or a project without
-- Realtime Authorization). Creating a policy needs ownership of realtime.messages; where the
-- migration role lacks it, the policies are skipped with a warning and can be created from the
-- dashboard's SQL editor with the statements below.
do $$
begin
    if to_regclass('realtime.messages') is null or to_regprocedure('realtime.topic()') is null then
        raise notice 'realtime.messages or realtime.topic() does not exist: private broadcast '
            'channel policies for engagement:<user id> are not created';
        return;
    end if;

    drop policy if exists "Users receive own engagement channel" on realtime.messages;
    create policy "Users receive own engagement channel"
        on realtime.messages
        as permissive
        for select
        to authenticated
        using (
            extension in ('broadcast', 'presence')
            and (select realtime.topic()) = 'engagement:' || (select auth.uid())::text
        );

    drop policy if exists "Engagement channels are per user" on realtime.messages;
    create policy "Engagement channels are per user"
        on realtime.messages
        as restrictive
        for select
        to anon, authenticated
        using (
            (select realtime.topic()) is null
            or (select realtime.topic()) not like 'engagement:%'
            or (select realtime.topic()) = 'engagement:' || (select auth.uid())::text
        );

    drop policy if exists "Only the backend sends on engagement channels" on realtime.messages;
    create policy "Only the backend sends on engagement channels"
        on realtime.messages
        as restrictive
        for insert
        to anon, authenticated
        with check (
            (select realtime.topic()) is null
            or (select realtime.topic()) not like 'engagement:%'
        );
exception
    when insufficient_privilege then
        raise warning 'cannot create policies on realtime.messages as %: %; create them from '
            'the SQL editor (supabase/migrations/20241210000000_realtime_graphql.sql)',
            current_user, sqlerrm;
end
$$;

-- GraphQL (pg_graphql) -------------------------------------------------------------------------
-- pg_graphql reads settings from a `@graphql({...})` directive in the table's comment; the
-- text before it stays the table's description. totalCount lets the app show "n events" for
-- a filtered collection without fetching it (counted under RLS: the caller's own rows only).
-- The directive is plain comment text, so it is set whether or not pg_graphql is installed,
-- and takes effect once it is. It must stay the last parenthesis of the comment: pg_graphql
-- takes the JSON between "@graphql(" and the comment's last ")".
comment on table public.engagement_events is
    'Engagement events of the BEE core module: one row per app open, completed goal, '
    'imported step count, ... Users read and soft-delete their own rows; service_role writes '
    'for anyone. Payloads are health data. '
    '@graphql({"totalCount": {"enabled": true}})';

do $$
begin
    if exists (select 1 from pg_extension where extname = 'pg_graphql') then
        raise notice 'pg_graphql is installed: engagement_events is visible to authenticated '
            '(own rows, RLS) and invisible to anon (no grant)';
    elsif exists (select 1 from pg_available_extensions where name = 'pg_graphql') then
        raise notice 'pg_graphql is available but not enabled: GraphQL is off for this project '
            '(enable it as described in docs/api-usage.md)';
    else
        raise notice 'pg_graphql is not available on this server: GraphQL settings are stored '
            'in the table comment only';
    end if;
end
$$;
