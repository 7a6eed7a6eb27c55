-- =============================================================================================
-- Migration: 20241231000000_rate_limit_slots
-- Purpose:   concurrent requests of one caller no longer wait for each other in the rate limit.
--            Until now each caller had one row, locked by every request from its count until
--            its transaction ended; once the limit is taken in the same transaction as the
--            write (public.ingest_engagement_events), that lock would line up one caller's
--            concurrent requests behind each other's write and commit. Now a caller's window
--            is held in several rows ("slots"): a request reads the counts other requests
--            have committed, and counts itself in a slot no concurrent request holds
--            (FOR UPDATE SKIP LOCKED), adding a slot when every one is taken. A caller has as
--            many slots as it ever had requests in flight at once.
-- Rule:      as in 20241205 (fixed one-minute windows, a refused request is not counted, the
--            answer is the seconds to the end of the window), with one difference: requests
--            of one caller that run at the same moment do not see each other's counts, so a
--            burst can pass a limit by at most the number of that caller's requests in flight
--            at once (with deploy.sh's settings at most 10 instances x 4 = 40 requests).
-- Objects:   private.rate_limit_windows gains `slot` (primary key (caller, slot));
--            public.take_engagement_rate_limit(text, integer, integer, integer): same
--            signature, answers and privileges.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- Rollback:  supabase/rollback/20241231000000_rate_limit_slots.down.sql
-- =============================================================================================

alter table private.rate_limit_windows add column if not exists slot integer not null default 0;

do $$
begin
    if not exists (
        select 1
        from pg_catalog.pg_constraint c
        join pg_catalog.pg_attribute a on a.attrelid = c.conrelid and a.attnum = any (c.conkey)
        where c.conname = 'rate_limit_windows_pkey'
          and c.conrelid = 'private.rate_limit_windows'::regclass
          and a.attname = 'slot'
    ) then
        alter table private.rate_limit_windows drop constraint if exists rate_limit_windows_pkey;
        alter table private.rate_limit_windows
            add constraint rate_limit_windows_pkey primary key (caller, slot);
    end if;
end
$$;

comment on table private.rate_limit_windows is
    'The current one-minute window of each batch_import caller, in one or more slots (one per '
    'request the caller had in flight at once): requests and events counted in it. Maintained '
    'by public.take_engagement_rate_limit(); rows of idle callers are removed by '
    'private.purge_engagement_data().';

create or replace function public.take_engagement_rate_limit(
    caller text,
    events integer,
    requests_per_minute integer,
    events_per_minute integer
)
returns integer
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    current_window timestamptz := pg_catalog.date_trunc('minute', pg_catalog.clock_timestamp());
    wait_seconds integer := pg_catalog.ceil(
        extract(epoch from current_window + interval '1 minute' - pg_catalog.clock_timestamp()))::integer;
    counted_requests bigint;
    counted_events numeric;
    free_slot integer;
    request_cap integer := case when requests_per_minute > 0 then requests_per_minute end;
    event_cap bigint := case when events_per_minute > 0 then events_per_minute end;
begin
    if caller is null or caller = '' then
        raise exception 'caller must be named' using errcode = '22023';
    end if;
    if events is null or events < 0 then
        raise exception 'events must be zero or more' using errcode = '22023';
    end if;
    if request_cap is null and event_cap is null then
        return 0;
    end if;
    -- A batch larger than the whole per-minute allowance could never pass: say so, not "wait".
    if event_cap is not null and events > event_cap then
        raise exception 'the batch has more events than the per-minute limit allows'
            using errcode = '22023',
                  hint = 'raise RATE_LIMIT_EVENTS_PER_MINUTE above MAX_BATCH_EVENTS';
    end if;

    -- What the caller's committed requests counted in this window, over every slot. No lock:
    -- a request in flight is not seen until it commits (the documented overshoot).
    select coalesce(pg_catalog.sum(w.requests), 0), coalesce(pg_catalog.sum(w.events), 0)
    into counted_requests, counted_events
    from private.rate_limit_windows w
    where w.caller = take_engagement_rate_limit.caller
      and w.window_start = current_window;

    if (request_cap is not null and counted_requests + 1 > request_cap)
       or (event_cap is not null and counted_events + events > event_cap) then
        return greatest(wait_seconds, 1);
    end if;

    -- Count in a slot that no concurrent request holds; its lock lasts until this transaction
    -- ends, and the others skip it instead of waiting.
    select w.slot
    into free_slot
    from private.rate_limit_windows w
    where w.caller = take_engagement_rate_limit.caller
    limit 1
    for update skip locked;

    if free_slot is null then
        -- Every slot is held by a request in flight (or the caller is new): add one. A random
        -- number, so that two requests adding a slot at once do not pick the same.
        insert into private.rate_limit_windows as w (caller, slot, window_start, requests, events)
        values (caller, (pg_catalog.random() * 2147483646)::integer, current_window, 1, events)
        on conflict on constraint rate_limit_windows_pkey do update
            set window_start = excluded.window_start,
                requests = case when w.window_start = excluded.window_start
                                then w.requests + 1 else 1 end,
                events = case when w.window_start = excluded.window_start
                              then w.events + excluded.events else excluded.events end;
        return 0;
    end if;

    update private.rate_limit_windows w
    set requests = case when w.window_start = current_window then w.requests + 1 else 1 end,
        events = case when w.window_start = current_window
                      then w.events + take_engagement_rate_limit.events
                      else take_engagement_rate_limit.events end,
        window_start = current_window
    where w.caller = take_engagement_rate_limit.caller
      and w.slot = free_slot;
    return 0;
end
$$;

comment on function public.take_engagement_rate_limit(text, integer, integer, integer) is
    'Counts one batch_import request of `events` events for `caller` in the current minute and '
    'returns 0, or returns the seconds to wait when that would pass a limit (nothing counted). '
    'Concurrent requests of one caller do not wait for each other, and may pass a limit by the '
    'number of them in flight at once. service_role only.';

revoke execute on function public.take_engagement_rate_limit(text, integer, integer, integer)
    from public, anon, authenticated;
grant execute on function public.take_engagement_rate_limit(text, integer, integer, integer)
    to service_role;
