-- =============================================================================================
-- Migration: 20241205000000_rate_limits
-- Purpose:   a per-caller rate limit for batch_import that holds across every instance of the
--            function: its state lives here, not in process memory. Each request asks
--            public.take_engagement_rate_limit() before it validates or writes anything.
-- Rule:      fixed one-minute windows per caller: at most `requests_per_minute` requests and
--            `events_per_minute` events. A request that would pass either limit is refused
--            and not counted, and the answer is the number of seconds until the window ends
--            (the function's 429 Retry-After). A limit of 0 or less means no limit. A fixed
--            window lets a caller spend up to twice a limit across a window boundary; that is
--            accepted for the simplicity of one row per caller.
-- Objects:   private.rate_limit_windows                     one row per caller (its window)
--            public.take_engagement_rate_limit(caller text, events integer,
--                requests_per_minute integer, events_per_minute integer) returns integer
--            (service_role only). `caller` is an opaque name the function derives from the
--            credential (a hash, never the credential itself).
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- =============================================================================================

create schema if not exists private;

create table if not exists private.rate_limit_windows (
    caller text not null,
    window_start timestamptz not null,
    requests integer not null,
    events bigint not null,
    constraint rate_limit_windows_pkey primary key (caller)
);

comment on table private.rate_limit_windows is
    'The current one-minute window of each batch_import caller: requests and events counted in '
    'it. Maintained by public.take_engagement_rate_limit(); rows of idle callers are removed by '
    'private.purge_engagement_data().';

alter table private.rate_limit_windows enable row level security;
revoke all on table private.rate_limit_windows from public, anon, authenticated;
grant select, insert, update, delete on table private.rate_limit_windows to service_role;

drop policy if exists "Service role manages rate limits" on private.rate_limit_windows;
create policy "Service role manages rate limits"
    on private.rate_limit_windows
    as permissive
    for all
    to service_role
    using (true)
    with check (true);

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
    row_window timestamptz;
    row_requests integer;
    row_events bigint;
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

    -- The first request of a caller creates its row; concurrent first requests meet the
    -- primary key and continue below with the row locked.
    insert into private.rate_limit_windows (caller, window_start, requests, events)
    values (caller, current_window, 0, 0)
    on conflict on constraint rate_limit_windows_pkey do nothing;

    select w.window_start, w.requests, w.events
    into row_window, row_requests, row_events
    from private.rate_limit_windows w
    where w.caller = take_engagement_rate_limit.caller
    for update;

    if row_window < current_window then
        row_window := current_window;
        row_requests := 0;
        row_events := 0;
    end if;

    if (request_cap is not null and row_requests + 1 > request_cap)
       or (event_cap is not null and row_events + events > event_cap) then
        return greatest(wait_seconds, 1);
    end if;

    update private.rate_limit_windows w
    set window_start = row_window,
        requests = row_requests + 1,
        events = row_events + take_engagement_rate_limit.events
    where w.caller = take_engagement_rate_limit.caller;
    return 0;
end
$$;

comment on function public.take_engagement_rate_limit(text, integer, integer, integer) is
    'Counts one batch_import request of `events` events for `caller` in the current minute and '
    'returns 0, or returns the seconds to wait when that would pass a limit (nothing counted). '
    'service_role only.';

revoke execute on function public.take_engagement_rate_limit(text, integer, integer, integer)
    from public, anon, authenticated;
grant execute on function public.take_engagement_rate_limit(text, integer, integer, integer)
    to service_role;
