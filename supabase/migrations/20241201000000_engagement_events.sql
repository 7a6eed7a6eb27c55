-- =============================================================================================
-- Migration: 20241201000000_engagement_events
-- Purpose:   engagement events logging for the BEE core module. One row per thing a user did
--            or a device reported (app opens, completed goals, imported step counts, ...),
--            written by the ingestion Cloud Functions (as service_role) and by the app itself
--            (as the signed-in user), read back by each user for their own timeline.
-- Depends:   auth.users (Supabase Auth). Every event belongs to a user and disappears with
--            that user (ON DELETE CASCADE), which is also how a GDPR erasure reaches this table.
-- Applies:   as the non-superuser `postgres` role on a Supabase database (`supabase db push`).
--            It needs no extension: gen_random_uuid() is core PostgreSQL since version 13, so
--            nothing here depends on pgcrypto or pgjwt being present. Realtime registration is
--            guarded and skipped with a notice where the publication does not exist.
--            Every statement is written to be safe to run twice.
--
-- Business rules for event_type (also in docs/database.md):
--   * lower snake case: a lowercase ASCII letter, then up to 63 lowercase letters, digits or
--     underscores (`^[a-z][a-z0-9_]{0,63}$`), so never empty and at most 64 characters;
--   * names say what happened, in the past or as a noun: app_open, goal_complete, steps_import;
--   * a new type needs no migration; the ingestion functions validate the `value` payload of
--     known types against schemas/events/<event_type>.schema.json and accept any JSON object
--     for the others.
-- Timestamps are stored in UTC (timestamptz) and may be at most 5 minutes in the future, the
-- allowance for clock skew between devices and the database; the ingestion functions enforce
-- the same bound before writing.
-- =============================================================================================

create table if not exists public.engagement_events (
    id uuid not null default gen_random_uuid(),
    user_id uuid not null,
    "timestamp" timestamptz not null default now(),
    event_type text not null,
    value jsonb not null default '{}'::jsonb,
    is_deleted boolean not null default false,
    constraint engagement_events_pkey primary key (id),
    constraint engagement_events_user_id_fkey
        foreign key (user_id) references auth.users (id) on delete cascade,
    constraint engagement_events_event_type_format
        check (event_type ~ '^[a-z][a-z0-9_]{0,63}$'),
    constraint engagement_events_timestamp_not_future
        check ("timestamp" <= now() + interval '5 minutes'),
    constraint engagement_events_value_is_object
        check (jsonb_typeof(value) = 'object')
);

comment on table public.engagement_events is
    'Engagement events of the BEE core module: one row per app open, completed goal, '
    'imported step count, ... Users read and soft-delete their own rows; service_role writes '
    'for anyone. Payloads are health data.';
comment on column public.engagement_events.id is
    'Event id; the ingestion functions use the caller''s event_id (or an id derived from the '
    'event''s content) so that a retried batch is stored once.';
comment on column public.engagement_events.user_id is 'The user the event belongs to.';
comment on column public.engagement_events."timestamp" is
    'When the event happened, in UTC; at most 5 minutes in the future.';
comment on column public.engagement_events.event_type is
    'Lower snake case, 1-64 characters: ^[a-z][a-z0-9_]{0,63}$ (e.g. app_open).';
comment on column public.engagement_events.value is
    'Event payload (a JSON object); validated per event_type by the ingestion functions.';
comment on column public.engagement_events.is_deleted is
    'Soft delete: set by the owner to hide an event; rows are removed only by service_role.';

-- Indexes, named idx_engagement_events_<purpose>.
-- The user's timeline, newest first; its leading column also covers the foreign key.
create index if not exists idx_engagement_events_user_timestamp
    on public.engagement_events (user_id, "timestamp" desc);
-- Containment searches on the payload (value @> '{...}'); jsonb_path_ops is smaller and faster
-- than the default operator class for @>, the only operator the API layer uses on value.
create index if not exists idx_engagement_events_value
    on public.engagement_events using gin (value jsonb_path_ops);
-- Filtering and counting by type.
create index if not exists idx_engagement_events_event_type
    on public.engagement_events (event_type);

-- Row-level security: without a policy that admits a row, nobody but service_role sees it.
alter table public.engagement_events enable row level security;

drop policy if exists "Users can view own events" on public.engagement_events;
create policy "Users can view own events"
    on public.engagement_events
    for select
    to authenticated
    using ((select auth.uid()) = user_id);

drop policy if exists "Users can insert own events" on public.engagement_events;
create policy "Users can insert own events"
    on public.engagement_events
    for insert
    to authenticated
    with check ((select auth.uid()) = user_id);

-- service_role bypasses RLS on Supabase; the policy states the intent for auditors and keeps
-- inserts working if BYPASSRLS is ever taken away.
drop policy if exists "Service role can insert any events" on public.engagement_events;
create policy "Service role can insert any events"
    on public.engagement_events
    for insert
    to service_role
    with check (true);

-- Soft delete: a user may mark their own event deleted. The column grant below limits what an
-- update can touch to is_deleted; the check keeps the row theirs and makes the mark one-way
-- (restoring an event is a service_role operation).
drop policy if exists "Users can soft-delete own events" on public.engagement_events;
create policy "Users can soft-delete own events"
    on public.engagement_events
    for update
    to authenticated
    using ((select auth.uid()) = user_id)
    with check ((select auth.uid()) = user_id and is_deleted);

-- Privileges. New Supabase projects no longer grant new tables to the API roles, and older
-- ones granted everything by default privileges: start from nothing and grant what each needs.
revoke all on table public.engagement_events from public, anon, authenticated, service_role;
-- anon: nothing at all.
grant select on table public.engagement_events to authenticated;
grant insert (id, user_id, "timestamp", event_type, value)
    on table public.engagement_events to authenticated;
grant update (is_deleted) on table public.engagement_events to authenticated;
grant select, insert, update, delete on table public.engagement_events to service_role;

-- Realtime: postgres_changes delivers inserts of tables in the supabase_realtime publication,
-- each to the subscribers whose RLS lets them select the row.
do $$
begin
    if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
        raise notice 'publication supabase_realtime does not exist: engagement_events is not '
            'added to Realtime; add it once the publication exists';
    elsif exists (
        select 1 from pg_publication where pubname = 'supabase_realtime' and puballtables
    ) then
        raise notice 'publication supabase_realtime already covers all tables';
    elsif not exists (
        select 1
        from pg_publication_tables
        where pubname = 'supabase_realtime'
          and schemaname = 'public'
          and tablename = 'engagement_events'
    ) then
        alter publication supabase_realtime add table public.engagement_events;
    end if;
end
$$;
