-- =============================================================================================
-- Migration: 20241220000000_event_type_timestamp_index
-- Purpose:   idx_engagement_events_event_type becomes (event_type, "timestamp" desc).
-- Why:       the event_type filter that backend jobs and dashboards run, "the newest events of
--            one type in the last day" (where event_type = $1 and "timestamp" >= now() - '1 day'
--            order by "timestamp" desc limit 100), was served badly by the single-column index: with
--            common types each matching a large share of the table, the planner read the whole
--            table or combined every row of the type with every row of the day (hundreds of
--            milliseconds per query at 10 million rows; docs/performance.md, "6. Queries at
--            scale", measured by bench/queries.py). With the timestamp as second key the
--            query reads only the rows it returns, newest first. The index still serves every
--            query that filters on event_type alone (its first column), so the single-column
--            index is replaced, not kept beside it.
-- Applies:   as the non-superuser `postgres` role. Safe to run twice: the old index is dropped
--            only while it still has the old definition. CREATE INDEX blocks writes to the
--            table while it builds (bench/queries.py measures how long on the full data set);
--            on a large production table build it first with
--              create index concurrently idx_engagement_events_event_type_new
--                  on public.engagement_events (event_type, "timestamp" desc);
--            then drop the old index and rename the new one, and this file does nothing more.
-- Rollback:  supabase/rollback/20241220000000_event_type_timestamp_index.down.sql
-- =============================================================================================

do $$
begin
    if exists (
        select 1
        from pg_catalog.pg_indexes
        where schemaname = 'public'
          and tablename = 'engagement_events'
          and indexname = 'idx_engagement_events_event_type'
          and indexdef <> 'CREATE INDEX idx_engagement_events_event_type ON public.engagement_events USING btree (event_type, "timestamp" DESC)'
    ) then
        drop index public.idx_engagement_events_event_type;
    end if;
end
$$;

create index if not exists idx_engagement_events_event_type
    on public.engagement_events (event_type, "timestamp" desc);

comment on index public.idx_engagement_events_event_type is
    'Filtering by event type, newest first: event_type = $1 [and a time range] order by '
    '"timestamp" desc.';
