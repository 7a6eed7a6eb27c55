-- Index use of the three query shapes the app and the API run, on a table big enough that a
-- sequential scan would lose (200,000 events of 2,000 users, statistics refreshed).
-- Runs with `supabase test db` and with the project's pytest suite.
begin;
create extension if not exists pgtap with schema extensions;
select plan(3);

insert into auth.users (id, aud, role, email)
select ('1d000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'authenticated', 'authenticated',
       'index-user-' || n || '@example.test'
from generate_series(1, 2000) as n;

insert into public.engagement_events (user_id, "timestamp", event_type, value)
select ('1d000000-0000-4000-8000-' || lpad(to_hex(1 + n % 2000), 12, '0'))::uuid,
       timestamptz '2024-01-01' + make_interval(mins => n),
       (array['app_open', 'steps_import', 'goal_complete'])[1 + n % 3] ||
           case when n % 1000 = 0 then '_rare' else '' end,
       case n % 3
           when 0 then jsonb_build_object('platform', (array['ios', 'android', 'web'])[1 + n % 3 ], 'session', n)
           when 1 then jsonb_build_object('steps', n % 20000, 'provider', case when n % 997 = 0 then 'polar' else 'apple_health' end)
           else jsonb_build_object('goal_type', 'daily_steps', 'target', 9000)
       end
from generate_series(1, 200000) as n;
analyze public.engagement_events;

-- EXPLAIN is a utility statement; this turns its text into rows that assertions can read.
create function pg_temp.plan_of(query text) returns text
language plpgsql
set search_path = ''
as $$
declare
    line text;
    plan text := '';
begin
    for line in execute 'explain (costs off) ' || query loop
        plan := plan || line || E'\n';
    end loop;
    return plan;
end;
$$;

select matches(
    pg_temp.plan_of($$select * from public.engagement_events
                      where user_id = '1d000000-0000-4000-8000-000000000007'
                      order by "timestamp" desc limit 50$$),
    'Index Scan using idx_engagement_events_user_timestamp',
    'user timeline (user_id = $1 order by timestamp desc limit 50) reads idx_engagement_events_user_timestamp');
select matches(
    pg_temp.plan_of($$select * from public.engagement_events where value @> '{"provider": "polar"}'$$),
    'Bitmap Index Scan on idx_engagement_events_value',
    'JSONB containment (value @> ...) reads idx_engagement_events_value');
select matches(
    pg_temp.plan_of($$select * from public.engagement_events where event_type = 'app_open_rare'$$),
    'idx_engagement_events_event_type',
    'event_type filter reads idx_engagement_events_event_type');

select * from finish();
rollback;
