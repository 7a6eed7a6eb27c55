-- =============================================================================================
-- Migration: 20241204000000_dead_letter
-- Purpose:   events that batch_import rejects are kept, not dropped: each one is stored with
--            its errors, the request id, the time and the caller's credential type, so that it
--            can be fixed upstream and replayed (`python -m functions.replay`).
-- Objects:   private.engagement_event_failures                 the dead-letter table
--            public.record_engagement_failures(failures jsonb)  how the functions write to it
--                                                                (service_role only)
-- Security:  the table lives in schema `private`, which the Data API does not expose, and no
--            API role but service_role has any privilege on it. Stored failures are health
--            data: they follow the retention rules of docs/data-retention.md (purged 30 days
--            after their last failure, erased with the user's events on request).
--            record_engagement_failures is SECURITY INVOKER: service_role has the privileges
--            it needs, and nobody else may execute it.
-- Idempotent writes: a client that retries a batch sends the same bad events again. Each
--            failure has a fingerprint (sha256 of the event as sent and of its errors); a
--            repeat raises `attempts` and `last_failed_at` instead of adding a row. A failure
--            that was replayed and fails again later is stored afresh (replayed_at is cleared).
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- =============================================================================================

create schema if not exists private;
revoke all on schema private from public;
revoke all on schema private from anon, authenticated;
grant usage on schema private to service_role;

create table if not exists private.engagement_event_failures (
    id bigint generated always as identity,
    fingerprint text not null,
    first_failed_at timestamptz not null default now(),
    last_failed_at timestamptz not null default now(),
    attempts integer not null default 1,
    request_id text not null,
    credential_type text not null,
    event_index integer not null,
    event_id uuid,
    user_id uuid,
    event text not null,
    errors jsonb not null,
    default_timezone text,
    replayed_at timestamptz,
    replay_request_id text,
    constraint engagement_event_failures_pkey primary key (id),
    constraint engagement_event_failures_fingerprint_key unique (fingerprint),
    constraint engagement_event_failures_credential_type_check
        check (credential_type in ('legacy_jwt', 'jwks', 'secret_key', 'replay')),
    constraint engagement_event_failures_errors_is_array
        check (jsonb_typeof(errors) = 'array'),
    constraint engagement_event_failures_attempts_positive check (attempts > 0)
);

comment on table private.engagement_event_failures is
    'Events batch_import rejected, kept for replay (dead-letter store). Health data: purged 30 '
    'days after the last failure by private.purge_engagement_data(); erased with the user by '
    'public.erase_engagement_user(). service_role only.';
comment on column private.engagement_event_failures.event is
    'The event exactly as sent, as JSON text (ASCII-escaped). Text, not jsonb: jsonb cannot hold '
    'some of what callers send (\u0000, lone surrogates), and those events must be kept too.';
comment on column private.engagement_event_failures.errors is
    'Every problem found: [{"path": "<JSON pointer in the event>", "message": "..."}].';
comment on column private.engagement_event_failures.user_id is
    'The event''s user_id when it was a UUID: what GDPR erasure looks for.';
comment on column private.engagement_event_failures.replayed_at is
    'When a replay imported the event (null: not replayed yet).';

-- Erasure and replay look rows up by user and by pending state; retention by age.
create index if not exists idx_engagement_event_failures_user_id
    on private.engagement_event_failures (user_id);
create index if not exists idx_engagement_event_failures_pending
    on private.engagement_event_failures (id) where replayed_at is null;
create index if not exists idx_engagement_event_failures_last_failed_at
    on private.engagement_event_failures (last_failed_at);

alter table private.engagement_event_failures enable row level security;
revoke all on table private.engagement_event_failures from public, anon, authenticated;
grant select, insert, update, delete on table private.engagement_event_failures to service_role;
revoke all on sequence private.engagement_event_failures_id_seq from public, anon, authenticated;
grant usage on sequence private.engagement_event_failures_id_seq to service_role;

-- service_role bypasses RLS; the policy states the intent for auditors and keeps the table
-- closed to every other role even if a grant is added by mistake.
drop policy if exists "Service role manages failures" on private.engagement_event_failures;
create policy "Service role manages failures"
    on private.engagement_event_failures
    as permissive
    for all
    to service_role
    using (true)
    with check (true);

-- ---------------------------------------------------------------------------------------------
-- Writing failures: one call per request, with every rejected event of it.
-- Each element of `failures`:
--   {"request_id": "...", "credential_type": "legacy_jwt", "index": 3,
--    "event_id": "<uuid or null>", "user_id": "<uuid or null>",
--    "event": "<the event as JSON text>", "errors": [{"path": ..., "message": ...}],
--    "default_timezone": "<zone or null>"}
-- event_id and user_id that are not UUIDs are stored as null. Returns the number of failures
-- newly stored (repeats of a pending failure count as 0).
-- ---------------------------------------------------------------------------------------------
create or replace function public.record_engagement_failures(failures jsonb)
returns integer
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    stored integer;
begin
    if failures is null or pg_catalog.jsonb_typeof(failures) <> 'array' then
        raise exception 'failures must be a JSON array'
            using errcode = '22023';
    end if;

    with incoming as (
        select f ->> 'request_id' as request_id,
               f ->> 'credential_type' as credential_type,
               (f ->> 'index')::integer as event_index,
               case when (f ->> 'event_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                    then (f ->> 'event_id')::uuid end as event_id,
               case when (f ->> 'user_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                    then (f ->> 'user_id')::uuid end as user_id,
               f ->> 'event' as event,
               coalesce(f -> 'errors', '[]'::jsonb) as errors,
               f ->> 'default_timezone' as default_timezone
        from pg_catalog.jsonb_array_elements(failures) as f
    ),
    fingerprinted as (
        -- One row per fingerprint: a batch may repeat the same bad event.
        select distinct on (fingerprint) *
        from (
            select i.*,
                   pg_catalog.encode(
                       extensions.digest(
                           pg_catalog.convert_to(
                               i.event || E'\n' || i.errors::text || E'\n'
                                   || coalesce(i.default_timezone, ''),
                               'UTF8'),
                           'sha256'),
                       'hex') as fingerprint
            from incoming i
        ) as x
        order by fingerprint, event_index
    ),
    written as (
        insert into private.engagement_event_failures as f
            (fingerprint, request_id, credential_type, event_index, event_id, user_id,
             event, errors, default_timezone)
        select fingerprint, request_id, credential_type, event_index, event_id, user_id,
               event, errors, default_timezone
        from fingerprinted
        on conflict (fingerprint) do update
            set last_failed_at = pg_catalog.now(),
                attempts = f.attempts + 1,
                request_id = excluded.request_id,
                credential_type = excluded.credential_type,
                event_index = excluded.event_index,
                -- Failing again after a replay makes it pending again.
                replayed_at = null,
                replay_request_id = null
        returning (xmax = 0) as inserted
    )
    select pg_catalog.count(*) filter (where inserted) into stored from written;
    return stored;
end
$$;

comment on function public.record_engagement_failures(jsonb) is
    'Stores events batch_import rejected in private.engagement_event_failures (dead-letter '
    'store), counting repeats instead of duplicating them. service_role only.';

revoke execute on function public.record_engagement_failures(jsonb)
    from public, anon, authenticated;
grant execute on function public.record_engagement_failures(jsonb) to service_role;
