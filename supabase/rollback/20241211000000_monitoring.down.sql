-- Rollback of 20241211000000_monitoring: unschedules the sampling job and drops the monitoring
-- schema with its views, functions and samples. Nothing of engagement_events or the
-- dead-letter store is touched; the samples (counters and sizes, no event data) are lost.
-- Run as `postgres`: psql "$DATABASE_URL" -f supabase/rollback/20241211000000_monitoring.down.sql
-- Safe to run twice.

do $unschedule$
begin
    -- Nested: cron.job can only be named once pg_cron is known to exist.
    if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
        perform cron.unschedule(jobid) from cron.job where jobname = 'engagement-monitoring-sample';
    end if;
end
$unschedule$;

drop schema if exists monitoring cascade;
