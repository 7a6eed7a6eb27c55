-- Down: 20241231000000_rate_limit_slots. Puts back one row per caller and the function of
-- 20241205 (a caller's concurrent requests wait for each other's transactions again). The
-- counts of the current minute in every slot but one are dropped: callers may send up to one
-- more minute's allowance.
do $$
begin
    if exists (select 1 from pg_catalog.pg_attribute
               where attrelid = 'private.rate_limit_windows'::regclass and attname = 'slot'
                 and not attisdropped) then
        delete from private.rate_limit_windows w
        where exists (
            select 1 from private.rate_limit_windows o
            where o.caller = w.caller and (o.window_start, o.slot) > (w.window_start, w.slot)
        );
        alter table private.rate_limit_windows drop constraint if exists rate_limit_windows_pkey;
        alter table private.rate_limit_windows drop column slot;
        alter table private.rate_limit_windows
            add constraint rate_limit_windows_pkey primary key (caller);
    end if;
end
$$;

comment on table private.rate_limit_windows is
    'The current one-minute window of each batch_import caller: requests and events counted in '
    'it. Maintained by public.take_engagement_rate_limit(); rows of idle callers are removed by '
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
    if event_cap is not null and events > event_cap then
        raise exception 'the batch has more events than the per-minute limit allows'
            using errcode = '22023',
                  hint = 'raise RATE_LIMIT_EVENTS_PER_MINUTE above MAX_BATCH_EVENTS';
    end if;

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
