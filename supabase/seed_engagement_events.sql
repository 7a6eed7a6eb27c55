-- Seed data for engagement_events: five test users with fixed ids, living in time zones that
-- exercise the timestamp rules (DST in both hemispheres, a 45-minute offset, a 30-minute DST
-- shift), each with months of app opens, daily step imports and completed goals.
--
-- Re-runnable: users are inserted with ON CONFLICT DO NOTHING and every event has an id derived
-- from its content (md5 of user, kind and local day), so a second run adds nothing.
-- Works as-is with `supabase db reset` (see supabase/config.toml) and with the project's local
-- stack. Times are chosen as local wall-clock times in each user's zone and stored in UTC, so
-- the same 07:15 local alarm lands at different UTC hours on either side of each DST change.

insert into auth.users (
    instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
    confirmation_token, recovery_token, email_change_token_new, email_change,
    raw_app_meta_data, raw_user_meta_data, created_at, updated_at
)
select
    '00000000-0000-0000-0000-000000000000',
    u.id, 'authenticated', 'authenticated', u.email, '', timestamptz '2024-01-15 09:00:00+00',
    '', '', '', '',
    '{"provider": "email", "providers": ["email"]}'::jsonb,
    jsonb_build_object('display_name', u.display_name, 'time_zone', u.tz),
    timestamptz '2024-01-15 09:00:00+00', timestamptz '2024-01-15 09:00:00+00'
from (values
    ('a1a1a1a1-0000-4000-8000-000000000001'::uuid, 'ana.seed@example.com',     'Ana',     'America/New_York'),
    ('b2b2b2b2-0000-4000-8000-000000000002'::uuid, 'ben.seed@example.com',     'Ben',     'Europe/London'),
    ('c3c3c3c3-0000-4000-8000-000000000003'::uuid, 'chandra.seed@example.com', 'Chandra', 'Asia/Kathmandu'),
    ('d4d4d4d4-0000-4000-8000-000000000004'::uuid, 'dana.seed@example.com',    'Dana',    'Australia/Lord_Howe'),
    ('e5e5e5e5-0000-4000-8000-000000000005'::uuid, 'eli.seed@example.com',     'Eli',     'America/Santiago')
) as u (id, email, display_name, tz)
on conflict (id) do nothing;

with seed_user (id, tz, platform, provider, device, step_base) as (
    values
        ('a1a1a1a1-0000-4000-8000-000000000001'::uuid, 'America/New_York',    'ios',     'apple_health', 'Apple Watch Series 9', 7500),
        ('b2b2b2b2-0000-4000-8000-000000000002'::uuid, 'Europe/London',       'android', 'google_fit',   'Pixel Watch 2',        6200),
        ('c3c3c3c3-0000-4000-8000-000000000003'::uuid, 'Asia/Kathmandu',      'android', 'fitbit',       'Fitbit Charge 6',      9100),
        ('d4d4d4d4-0000-4000-8000-000000000004'::uuid, 'Australia/Lord_Howe', 'ios',     'garmin',       'Garmin Venu 3',        11000),
        ('e5e5e5e5-0000-4000-8000-000000000005'::uuid, 'America/Santiago',    'web',     'google_fit',   'Samsung Galaxy Watch6', 5400)
),
day as (
    -- 1 February to 30 November 2024: spans the March/April and October/November DST changes
    -- of both hemispheres.
    select d::date as local_day from generate_series(date '2024-02-01', date '2024-11-30', interval '1 day') as d
),
draw as (
    -- Deterministic pseudo-random numbers per user and day, from md5.
    select u.*, day.local_day,
           ('x' || substr(md5(u.id::text || day.local_day::text), 1, 8))::bit(32)::int as r1,
           ('x' || substr(md5(day.local_day::text || u.id::text), 1, 8))::bit(32)::int as r2
    from seed_user u cross join day
),
app_open as (
    -- A morning open every day, an evening open on most days.
    select md5(id::text || 'app_open-am' || local_day::text)::uuid as event_id, id as user_id,
           ((local_day + time '07:15' + make_interval(mins => abs(r1 % 40))) at time zone tz) as at,
           'app_open' as event_type,
           jsonb_build_object(
               'platform', platform,
               'app_version', case when local_day < date '2024-06-15' then '3.4.1' else '3.5.0' end,
               'session_id', md5(id::text || 'session-am' || local_day::text)::uuid,
               'source', (array['launcher', 'push_notification', 'widget'])[1 + abs(r1 % 3)]
           ) as value
    from draw
    union all
    select md5(id::text || 'app_open-pm' || local_day::text)::uuid, id,
           ((local_day + time '20:30' + make_interval(mins => abs(r2 % 75))) at time zone tz),
           'app_open',
           jsonb_build_object(
               'platform', platform,
               'app_version', case when local_day < date '2024-06-15' then '3.4.1' else '3.5.0' end,
               'session_id', md5(id::text || 'session-pm' || local_day::text)::uuid,
               'source', (array['launcher', 'deep_link'])[1 + abs(r2 % 2)],
               'cold_start', (r2 % 5 = 0)
           )
    from draw
    where abs(r2 % 10) < 8
),
steps as (
    -- One import per local day, taken at 23:00 local time, covering that local day.
    select md5(id::text || 'steps_import' || local_day::text)::uuid as event_id, id as user_id,
           ((local_day + time '23:00') at time zone tz) as at,
           'steps_import' as event_type,
           jsonb_build_object(
               'steps', greatest(0, step_base + (r1 % 4000)),
               'source', provider,
               'device', device,
               'period_start', to_char((local_day::timestamp at time zone tz) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
               'period_end', to_char(((local_day + 1)::timestamp at time zone tz) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
           ) as value
    from draw
),
goals as (
    -- A step goal whenever the day's steps beat 9,000, and a weekly mindfulness goal on Sundays.
    select md5(id::text || 'goal-steps' || local_day::text)::uuid as event_id, id as user_id,
           ((local_day + time '21:45') at time zone tz) as at,
           'goal_complete' as event_type,
           jsonb_build_object(
               'goal_id', md5(id::text || 'goal-daily-steps')::uuid,
               'goal_type', 'steps',
               'period', 'daily',
               'target', 9000,
               'achieved', step_base + (r1 % 4000),
               'unit', 'steps',
               'streak_days', 1 + abs(r2 % 14)
           ) as value
    from draw
    where step_base + (r1 % 4000) > 9000
    union all
    select md5(id::text || 'goal-mindful' || local_day::text)::uuid, id,
           ((local_day + time '18:05') at time zone tz),
           'goal_complete',
           jsonb_build_object(
               'goal_id', md5(id::text || 'goal-weekly-mindfulness')::uuid,
               'goal_type', 'mindfulness',
               'period', 'weekly',
               'target', 60,
               'achieved', 60 + abs(r1 % 45),
               'unit', 'minutes',
               'streak_days', 7 * (1 + abs(r2 % 6))
           )
    from draw
    where extract(isodow from local_day) = 7
)
insert into public.engagement_events (id, user_id, "timestamp", event_type, value)
select event_id, user_id, at, event_type, value from app_open
union all
select event_id, user_id, at, event_type, value from steps
union all
select event_id, user_id, at, event_type, value from goals
on conflict (id) do nothing;

-- One soft-deleted event per user, so clients and tests see the flag in use.
update public.engagement_events
set is_deleted = true
where id in (
    select md5(u::text || 'app_open-am' || '2024-03-05')::uuid
    from unnest(array[
        'a1a1a1a1-0000-4000-8000-000000000001', 'b2b2b2b2-0000-4000-8000-000000000002',
        'c3c3c3c3-0000-4000-8000-000000000003', 'd4d4d4d4-0000-4000-8000-000000000004',
        'e5e5e5e5-0000-4000-8000-000000000005'
    ]::uuid[]) as u
);
