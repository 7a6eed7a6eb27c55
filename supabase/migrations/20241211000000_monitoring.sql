-- =============================================================================================
-- Migration: 20241211000000_monitoring
-- Purpose:   the database side of the operations runbook (docs/runbook.md): views and functions
--            that say how big engagement_events is and how fast it grows, how fast rows
--            arrive, how the dead-letter store fills, how far Realtime's replication slot lags,
--            and one view of health checks that on-call reads first.
-- Schema:    `monitoring`, which the Data API does not expose (it is not in pgrst.db_schemas),
--            usable by postgres and service_role only. The views run with the caller's rights
--            (security_invoker), so they show nothing a caller could not read anyway.
-- Applies:   as `postgres`; pg_cron (sampling every minute) is used when installed and skipped
--            with a notice otherwise. Needs 20241204 (private.engagement_event_failures).
--            Safe to run twice.
-- Rollback:  supabase/rollback/20241211000000_monitoring.down.sql
-- =============================================================================================

create schema if not exists monitoring;
comment on schema monitoring is
    'Operational views and functions for engagement_events (docs/runbook.md). Not exposed by '
    'the Data API; postgres and service_role only.';
revoke all on schema monitoring from public, anon, authenticated;
grant usage on schema monitoring to service_role;

-- ---------------------------------------------------------------------------------------------
-- Size, rows, vacuum: what PostgreSQL's statistics say now, for the table and the dead-letter
-- store. Row counts are the statistics' estimates (exact counts would scan the table).
-- ---------------------------------------------------------------------------------------------
create or replace view monitoring.engagement_table_stats
with (security_invoker = true)
as
select
    format('%I.%I', s.schemaname, s.relname) as relation,
    pg_total_relation_size(s.relid) as total_bytes,
    pg_relation_size(s.relid) as table_bytes,
    pg_indexes_size(s.relid) as index_bytes,
    pg_total_relation_size(s.relid) - pg_relation_size(s.relid) - pg_indexes_size(s.relid)
        as toast_bytes,
    pg_size_pretty(pg_total_relation_size(s.relid)) as total_size,
    s.n_live_tup as live_rows,
    s.n_dead_tup as dead_rows,
    round(s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0), 4) as dead_ratio,
    s.n_tup_ins as inserted_since_stats_reset,
    s.n_tup_upd as updated_since_stats_reset,
    s.n_tup_del as deleted_since_stats_reset,
    s.n_mod_since_analyze as modified_since_analyze,
    s.last_vacuum,
    s.last_autovacuum,
    s.last_analyze,
    s.last_autoanalyze,
    s.autovacuum_count,
    s.autoanalyze_count
from pg_catalog.pg_stat_user_tables s
where (s.schemaname, s.relname) in (
    ('public', 'engagement_events'),
    ('private', 'engagement_event_failures')
);

comment on view monitoring.engagement_table_stats is
    'Size, estimated rows, dead rows and vacuum history of engagement_events and the '
    'dead-letter store.';

-- Index sizes and use: an index that is never scanned costs every insert and is a candidate
-- for removal; a large index on a small table is a bloat suspect (docs/runbook.md).
create or replace view monitoring.engagement_index_stats
with (security_invoker = true)
as
select
    format('%I.%I', i.schemaname, i.relname) as relation,
    i.indexrelname as index_name,
    pg_relation_size(i.indexrelid) as index_bytes,
    pg_size_pretty(pg_relation_size(i.indexrelid)) as index_size,
    i.idx_scan as scans,
    i.idx_tup_read as tuples_read
from pg_catalog.pg_stat_user_indexes i
where (i.schemaname, i.relname) in (
    ('public', 'engagement_events'),
    ('private', 'engagement_event_failures')
);

comment on view monitoring.engagement_index_stats is
    'Size and scan counts of the indexes of engagement_events and the dead-letter store.';

-- ---------------------------------------------------------------------------------------------
-- Growth and insert rate. The table has no "inserted at" column (`timestamp` is when the event
-- happened, and imports are often days late), so the true insert rate comes from PostgreSQL's
-- cumulative insert counter, sampled once a minute. The samples also give size growth.
-- ---------------------------------------------------------------------------------------------
create table if not exists monitoring.engagement_stat_samples (
    sampled_at timestamptz not null default now(),
    inserted bigint not null,
    updated bigint not null,
    deleted bigint not null,
    live_rows bigint not null,
    dead_rows bigint not null,
    total_bytes bigint not null,
    failures_total bigint,
    failures_pending bigint,
    constraint engagement_stat_samples_pkey primary key (sampled_at)
);

comment on table monitoring.engagement_stat_samples is
    'One row a minute (pg_cron) of engagement_events counters and size; kept 35 days.';

alter table monitoring.engagement_stat_samples enable row level security;
revoke all on table monitoring.engagement_stat_samples from public, anon, authenticated;
grant select, insert, delete on table monitoring.engagement_stat_samples to service_role;

drop policy if exists "Service role reads and writes samples" on monitoring.engagement_stat_samples;
create policy "Service role reads and writes samples"
    on monitoring.engagement_stat_samples
    as permissive
    for all
    to service_role
    using (true)
    with check (true);

create or replace function monitoring.sample_engagement_stats()
returns monitoring.engagement_stat_samples
language plpgsql
security invoker
set search_path = ''
as $$
declare
    sample monitoring.engagement_stat_samples;
begin
    insert into monitoring.engagement_stat_samples (
        sampled_at, inserted, updated, deleted, live_rows, dead_rows, total_bytes,
        failures_total, failures_pending
    )
    select
        now(), s.n_tup_ins, s.n_tup_upd, s.n_tup_del, s.n_live_tup, s.n_dead_tup,
        pg_catalog.pg_total_relation_size(s.relid),
        (select count(*) from private.engagement_event_failures),
        (select count(*) from private.engagement_event_failures where replayed_at is null)
    from pg_catalog.pg_stat_user_tables s
    where s.schemaname = 'public' and s.relname = 'engagement_events'
    on conflict (sampled_at) do nothing
    returning * into sample;

    delete from monitoring.engagement_stat_samples
    where sampled_at < now() - interval '35 days';
    return sample;
end
$$;

comment on function monitoring.sample_engagement_stats() is
    'Records one sample of engagement_events counters and size (pg_cron runs it every minute); '
    'drops samples older than 35 days.';

revoke execute on function monitoring.sample_engagement_stats() from public, anon, authenticated;
grant execute on function monitoring.sample_engagement_stats() to service_role;

-- Inserts and growth between consecutive samples. A counter that went down (statistics reset,
-- crash recovery, failover) gives no rate for that interval rather than a negative one.
create or replace view monitoring.engagement_insert_rate
with (security_invoker = true)
as
select
    sampled_at,
    extract(epoch from sampled_at - previous_at)::numeric as seconds,
    case when inserted >= previous_inserted then inserted - previous_inserted end as inserted,
    case when inserted >= previous_inserted then
        round((inserted - previous_inserted) * 60
              / nullif(extract(epoch from sampled_at - previous_at)::numeric, 0), 1)
    end as inserts_per_minute,
    total_bytes - previous_bytes as bytes_added,
    case when failures_total >= previous_failures then failures_total - previous_failures end
        as new_failures
from (
    select
        s.*,
        lag(s.sampled_at) over w as previous_at,
        lag(s.inserted) over w as previous_inserted,
        lag(s.total_bytes) over w as previous_bytes,
        lag(s.failures_total) over w as previous_failures
    from monitoring.engagement_stat_samples s
    window w as (order by s.sampled_at)
) d
where previous_at is not null;

comment on view monitoring.engagement_insert_rate is
    'Rows inserted into engagement_events, bytes added and new dead-lettered events between '
    'consecutive samples (about one minute each).';

create or replace view monitoring.engagement_insert_rate_hourly
with (security_invoker = true)
as
select
    date_trunc('hour', sampled_at) as hour,
    sum(inserted) as inserted,
    round(sum(inserted) * 60 / nullif(sum(seconds), 0), 1) as inserts_per_minute,
    sum(bytes_added) as bytes_added,
    sum(new_failures) as new_failures
from monitoring.engagement_insert_rate
group by 1;

comment on view monitoring.engagement_insert_rate_hourly is
    'monitoring.engagement_insert_rate summed per hour.';

-- What the events themselves say, by when they happened: for app events (sent as they happen)
-- this tracks arrival; imports land on the hours they describe. Last 48 hours only, so the
-- query stays on the (user_id, timestamp) index's cheap side of a sequential scan.
create or replace view monitoring.engagement_events_by_hour
with (security_invoker = true)
as
select
    date_trunc('hour', e."timestamp") as hour,
    e.event_type,
    count(*) as events,
    count(*) filter (where e.is_deleted) as soft_deleted,
    count(distinct e.user_id) as users
from public.engagement_events e
where e."timestamp" >= now() - interval '48 hours'
group by 1, 2;

comment on view monitoring.engagement_events_by_hour is
    'Events per hour of their timestamp and type over the last 48 hours.';

-- ---------------------------------------------------------------------------------------------
-- Dead-letter store: how many failures wait for replay, how fast new ones arrive, and which
-- fields fail (paths only: the messages never contain values, but the events are health data
-- and are not shown here).
-- ---------------------------------------------------------------------------------------------
create or replace view monitoring.dead_letter_stats
with (security_invoker = true)
as
select
    count(*) as total,
    count(*) filter (where replayed_at is null) as pending,
    count(*) filter (where replayed_at is not null) as replayed,
    count(*) filter (where first_failed_at >= now() - interval '1 hour') as new_last_hour,
    count(*) filter (where first_failed_at >= now() - interval '24 hours') as new_last_day,
    count(*) filter (where last_failed_at >= now() - interval '1 hour' and attempts > 1)
        as repeated_last_hour,
    min(first_failed_at) filter (where replayed_at is null) as oldest_pending_at,
    count(distinct user_id) filter (where replayed_at is null) as pending_users,
    coalesce(sum(attempts), 0) as attempts
from private.engagement_event_failures;

comment on view monitoring.dead_letter_stats is
    'Counts of the dead-letter store (private.engagement_event_failures): pending, replayed, '
    'new in the last hour and day, oldest pending.';

create or replace view monitoring.dead_letter_errors
with (security_invoker = true)
as
select
    coalesce(nullif(err ->> 'path', ''), '(event)') as path,
    count(*) as pending_errors,
    count(distinct f.id) as pending_events,
    max(f.last_failed_at) as last_seen_at
from private.engagement_event_failures f
cross join lateral jsonb_array_elements(f.errors) err
where f.replayed_at is null
group by 1;

comment on view monitoring.dead_letter_errors is
    'Pending dead-lettered events by the JSON pointer of their errors: which field fails most.';

-- ---------------------------------------------------------------------------------------------
-- Realtime: postgres_changes reads the WAL through a logical replication slot. WAL the slot
-- has not confirmed is both the delivery backlog and disk the database cannot free.
-- ---------------------------------------------------------------------------------------------
create or replace view monitoring.replication_slot_lag
with (security_invoker = true)
as
select
    r.slot_name,
    r.plugin,
    r.active,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn) as lag_bytes,
    pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), r.confirmed_flush_lsn)) as lag,
    pg_wal_lsn_diff(pg_current_wal_lsn(), r.restart_lsn) as retained_wal_bytes,
    r.wal_status
from pg_catalog.pg_replication_slots r
where r.slot_type = 'logical';

comment on view monitoring.replication_slot_lag is
    'Logical replication slots (Realtime''s among them): unconfirmed and retained WAL.';

-- ---------------------------------------------------------------------------------------------
-- Health checks: one row per check, `ok` false when it needs attention. Thresholds are the
-- runbook's; change them by replacing this view in a new migration.
-- ---------------------------------------------------------------------------------------------
create or replace view monitoring.engagement_health
with (security_invoker = true)
as
with latest as (
    select max(sampled_at) as sampled_at from monitoring.engagement_stat_samples
),
stats as (
    select * from monitoring.engagement_table_stats where relation = 'public.engagement_events'
),
dead_letters as (
    select * from monitoring.dead_letter_stats
),
slots as (
    select max(lag_bytes) as lag_bytes, bool_and(active) as all_active
    from monitoring.replication_slot_lag
),
last_hour as (
    select sum(inserted) as inserted, sum(new_failures) as new_failures
    from monitoring.engagement_insert_rate
    where sampled_at >= now() - interval '1 hour'
)
select 'sampling_running' as check_name,
       extract(epoch from now() - latest.sampled_at)::numeric as value,
       300::numeric as threshold,
       coalesce(latest.sampled_at >= now() - interval '5 minutes', false) as ok,
       'seconds since the last sample; pg_cron must run monitoring.sample_engagement_stats()'
           as detail
from latest
union all
select 'dead_rows_ratio', stats.dead_ratio, 0.2,
       coalesce(stats.dead_ratio <= 0.2 or stats.live_rows < 10000, true),
       'dead / (live + dead) rows of engagement_events; autovacuum is behind when high'
from stats
union all
select 'dead_letter_new_last_hour', dead_letters.new_last_hour, 100,
       dead_letters.new_last_hour <= 100,
       'events newly dead-lettered in the last hour; a sender is sending invalid data'
from dead_letters
union all
select 'dead_letter_oldest_pending_days',
       round(extract(epoch from now() - dead_letters.oldest_pending_at)::numeric / 86400, 2),
       7,
       coalesce(dead_letters.oldest_pending_at >= now() - interval '7 days', true),
       'age of the oldest failure not yet replayed; the purge removes failures after 30 days'
from dead_letters
union all
select 'replication_slot_lag_bytes', slots.lag_bytes, 1073741824,
       coalesce(slots.lag_bytes <= 1073741824, true),
       'largest unconfirmed WAL of a logical slot (Realtime); 1 GiB and more: deliveries stall '
       'and WAL accumulates on disk'
from slots
union all
select 'insert_failure_ratio_last_hour',
       round(last_hour.new_failures::numeric
             / nullif(last_hour.inserted + last_hour.new_failures, 0), 4),
       0.05,
       coalesce(last_hour.new_failures::numeric
                / nullif(last_hour.inserted + last_hour.new_failures, 0) <= 0.05, true),
       'dead-lettered / (inserted + dead-lettered) events in the last hour of samples'
from last_hour;

comment on view monitoring.engagement_health is
    'One row per check with its value, threshold and ok; start here (docs/runbook.md).';

-- Privileges: postgres owns everything; service_role reads. Nobody else.
revoke all on all tables in schema monitoring from public, anon, authenticated;
grant select on all tables in schema monitoring to service_role;

-- Sampling every minute where pg_cron is installed (Dashboard > Integrations > Cron).
do $schedule$
begin
    if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
        perform cron.schedule(
            'engagement-monitoring-sample',
            '* * * * *',
            'select monitoring.sample_engagement_stats()'
        );
    else
        raise notice 'pg_cron is not installed: run select monitoring.sample_engagement_stats() '
            'every minute from a scheduler (docs/runbook.md), or the growth views stay empty';
    end if;
end
$schedule$;
