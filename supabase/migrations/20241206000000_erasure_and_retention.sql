-- =============================================================================================
-- Migration: 20241206000000_erasure_and_retention
-- Purpose:   GDPR erasure and the retention rules of docs/data-retention.md, in the database:
--            - engagement_events.deleted_at: when a soft delete happened (set by a trigger,
--              so neither the app nor a user can backdate or move it);
--            - public.erase_engagement_user(target uuid): erases one user's events and
--              dead-lettered failures and reports what it removed (service_role only);
--            - deleting the user in auth.users does the same: events through the foreign
--              key's cascade, failures through a trigger on auth.users;
--            - private.purge_engagement_data(...): the scheduled purge (soft-deleted events
--              30 days after deletion, failures 30 days after their last failure, events
--              older than 36 months, idle rate-limit rows), run daily by pg_cron where the
--              extension is available, else by any scheduler as shown in the document.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
--            The trigger on auth.users needs the TRIGGER privilege there, which `postgres`
--            holds on Supabase; where it does not, the migration says so (NOTICE) and goes on,
--            and erasure through erase_engagement_user() still covers the failures.
-- =============================================================================================

-- ---------------------------------------------------------------------------------------------
-- When a soft delete happened.
-- ---------------------------------------------------------------------------------------------
alter table public.engagement_events add column if not exists deleted_at timestamptz;

comment on column public.engagement_events.deleted_at is
    'When is_deleted became true (set by trigger; null while the event is live). Soft-deleted '
    'events are purged 30 days after this moment.';

alter table public.engagement_events
    drop constraint if exists engagement_events_deleted_at_matches_flag;
-- Rows soft-deleted before this migration get the time it ran: their 30 days start now.
update public.engagement_events set deleted_at = now() where is_deleted and deleted_at is null;
alter table public.engagement_events
    add constraint engagement_events_deleted_at_matches_flag
    check ((deleted_at is null) = (not is_deleted));

create or replace function private.engagement_events_stamp_deletion()
returns trigger
language plpgsql
security invoker
set search_path = ''
as $$
begin
    if new.is_deleted and (tg_op = 'INSERT' or not old.is_deleted) then
        new.deleted_at := pg_catalog.now();
    elsif new.is_deleted then
        new.deleted_at := old.deleted_at;  -- the first deletion counts; nobody moves it
    else
        new.deleted_at := null;            -- restored (service_role only)
    end if;
    return new;
end
$$;

comment on function private.engagement_events_stamp_deletion() is
    'Trigger: keeps engagement_events.deleted_at equal to the moment is_deleted became true.';
revoke execute on function private.engagement_events_stamp_deletion()
    from public, anon, authenticated;

-- Users update is_deleted only (column grants), so this fires on each user soft delete; the
-- function runs as the updating role and touches nothing but the row itself.
-- `usage` on schema private is needed to call the trigger function: authenticated has none,
-- so the trigger lives in private but is created by the table owner and fires without it.
drop trigger if exists engagement_events_stamp_deletion on public.engagement_events;
create trigger engagement_events_stamp_deletion
    before insert or update of is_deleted, deleted_at on public.engagement_events
    for each row execute function private.engagement_events_stamp_deletion();

-- Partial index for the purge: only soft-deleted rows, by deletion time.
create index if not exists idx_engagement_events_deleted_at
    on public.engagement_events (deleted_at) where is_deleted;

-- ---------------------------------------------------------------------------------------------
-- GDPR erasure of one user.
-- ---------------------------------------------------------------------------------------------
create or replace function public.erase_engagement_user(target uuid)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    events_removed bigint;
    failures_removed bigint;
begin
    if target is null then
        raise exception 'target must be a user id' using errcode = '22023';
    end if;

    delete from public.engagement_events e where e.user_id = target;
    get diagnostics events_removed = row_count;

    -- Failures are kept as sent, so a user id may also sit in an event whose user_id was not
    -- parsed (e.g. an invalid event that names the user elsewhere): match the text as well.
    delete from private.engagement_event_failures f
    where f.user_id = target
       or pg_catalog.strpos(pg_catalog.lower(f.event), target::text) > 0;
    get diagnostics failures_removed = row_count;

    return pg_catalog.jsonb_build_object(
        'user_id', target,
        'events', events_removed,
        'failures', failures_removed,
        'erased_at', pg_catalog.now()
    );
end
$$;

comment on function public.erase_engagement_user(uuid) is
    'GDPR erasure: deletes every engagement event and every dead-lettered failure of one user '
    'and returns {"user_id", "events", "failures", "erased_at"}. service_role only. Deleting '
    'the user in auth.users does the same.';

revoke execute on function public.erase_engagement_user(uuid) from public, anon, authenticated;
grant execute on function public.erase_engagement_user(uuid) to service_role;

-- Deleting a user: events go by the foreign key's cascade; failures have no foreign key (they
-- may name users that never existed), so a trigger removes them. SECURITY DEFINER because
-- Supabase Auth (supabase_auth_admin) deletes users and has no privilege on schema private.
create or replace function private.erase_failures_of_deleted_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    delete from private.engagement_event_failures f
    where f.user_id = old.id
       or pg_catalog.strpos(pg_catalog.lower(f.event), old.id::text) > 0;
    return old;
end
$$;

comment on function private.erase_failures_of_deleted_user() is
    'Trigger on auth.users: a deleted user''s dead-lettered failures go with their events.';
revoke execute on function private.erase_failures_of_deleted_user()
    from public, anon, authenticated, service_role;

do $trigger$
begin
    if pg_catalog.has_table_privilege('auth.users', 'TRIGGER') then
        -- create or replace needs only the TRIGGER privilege (drop would need ownership).
        create or replace trigger engagement_erase_failures_on_user_delete
            after delete on auth.users
            for each row execute function private.erase_failures_of_deleted_user();
    else
        raise notice 'no TRIGGER privilege on auth.users: deleting a user will not erase their '
            'dead-lettered failures; call public.erase_engagement_user() before deleting users';
    end if;
end
$trigger$;

-- ---------------------------------------------------------------------------------------------
-- Retention: the scheduled purge.
-- ---------------------------------------------------------------------------------------------
create or replace function private.purge_engagement_data(
    soft_deleted_after interval default interval '30 days',
    failures_after interval default interval '30 days',
    events_after interval default interval '36 months'
)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    soft_deleted_removed bigint;
    failures_removed bigint;
    expired_removed bigint;
    windows_removed bigint;
begin
    if soft_deleted_after < interval '0' or failures_after < interval '0'
       or events_after < interval '0' then
        raise exception 'retention periods must not be negative' using errcode = '22023';
    end if;

    delete from public.engagement_events e
    where e.is_deleted and e.deleted_at < pg_catalog.now() - soft_deleted_after;
    get diagnostics soft_deleted_removed = row_count;

    delete from public.engagement_events e
    where e."timestamp" < pg_catalog.now() - events_after;
    get diagnostics expired_removed = row_count;

    delete from private.engagement_event_failures f
    where f.last_failed_at < pg_catalog.now() - failures_after;
    get diagnostics failures_removed = row_count;

    delete from private.rate_limit_windows w
    where w.window_start < pg_catalog.now() - interval '1 hour';
    get diagnostics windows_removed = row_count;

    return pg_catalog.jsonb_build_object(
        'soft_deleted_events', soft_deleted_removed,
        'expired_events', expired_removed,
        'failures', failures_removed,
        'rate_limit_windows', windows_removed,
        'purged_at', pg_catalog.now()
    );
end
$$;

comment on function private.purge_engagement_data(interval, interval, interval) is
    'Retention purge (docs/data-retention.md): soft-deleted events 30 days after deletion, '
    'dead-lettered failures 30 days after their last failure, events older than 36 months, '
    'idle rate-limit windows. Returns what it removed. Scheduled daily by pg_cron when present.';

revoke execute on function private.purge_engagement_data(interval, interval, interval)
    from public, anon, authenticated;
grant execute on function private.purge_engagement_data(interval, interval, interval)
    to service_role;

-- Daily at 03:17 UTC, where pg_cron is installed (Dashboard > Integrations > Cron). Without it
-- the purge is run by the scheduler the document describes; nothing fails here.
do $schedule$
begin
    if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
        perform cron.schedule(
            'engagement-retention-purge',
            '17 3 * * *',
            'select private.purge_engagement_data()'
        );
    else
        raise notice 'pg_cron is not installed: schedule private.purge_engagement_data() '
            'as docs/data-retention.md describes';
    end if;
end
$schedule$;
