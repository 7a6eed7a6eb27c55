-- Down: 20241206000000_erasure_and_retention. Removes the purge, erasure and deletion stamp;
-- soft-deleted rows stay soft-deleted (is_deleted), only the time of deletion is lost.
do $unschedule$
begin
    -- Nested: cron.job can only be named once pg_cron is known to exist (PL/pgSQL plans the
    -- whole condition of one IF, so `exists(pg_cron) and exists(cron.job ...)` fails without it).
    if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
        if exists (select 1 from cron.job where jobname = 'engagement-retention-purge') then
            perform cron.unschedule('engagement-retention-purge');
        end if;
    end if;
end
$unschedule$;
drop function if exists private.purge_engagement_data(interval, interval, interval);
-- Dropping the function drops the trigger on auth.users with it (dropping the trigger by name
-- would need ownership of auth.users).
drop function if exists private.erase_failures_of_deleted_user() cascade;
drop function if exists public.erase_engagement_user(uuid);
drop trigger if exists engagement_events_stamp_deletion on public.engagement_events;
drop function if exists private.engagement_events_stamp_deletion();
drop index if exists public.idx_engagement_events_deleted_at;
alter table public.engagement_events drop constraint if exists engagement_events_deleted_at_matches_flag;
alter table public.engagement_events drop column if exists deleted_at;
