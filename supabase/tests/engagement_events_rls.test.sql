-- Row-level security of public.engagement_events, tried the way the Data API runs requests:
-- `set local role <role>` plus `request.jwt.claims`, as PostgREST does per request.
-- Runs with `supabase test db` and with the project's pytest suite.
-- Each description reads "<who> | <what was tried> | <what must happen>"; the RLS audit
-- (docs/rls-audit.md) is generated from these lines.
begin;
create extension if not exists pgtap with schema extensions;
select plan(36);

-- Two users, A and B, with two events each (written as the table owner).
insert into auth.users (id, aud, role, email, created_at, updated_at)
values ('0a000000-0000-4000-8000-00000000000a', 'authenticated', 'authenticated', 'rls-a@example.test', now(), now()),
       ('0b000000-0000-4000-8000-00000000000b', 'authenticated', 'authenticated', 'rls-b@example.test', now(), now());
insert into public.engagement_events (id, user_id, "timestamp", event_type, value)
values ('a0000000-0000-4000-8000-0000000000a1', '0a000000-0000-4000-8000-00000000000a', now() - interval '2 hours', 'app_open', '{"platform": "ios"}'),
       ('a0000000-0000-4000-8000-0000000000a2', '0a000000-0000-4000-8000-00000000000a', now() - interval '1 hour', 'steps_import', '{"steps": 4200}'),
       ('b0000000-0000-4000-8000-0000000000b1', '0b000000-0000-4000-8000-00000000000b', now() - interval '2 hours', 'app_open', '{"platform": "android"}'),
       ('b0000000-0000-4000-8000-0000000000b2', '0b000000-0000-4000-8000-00000000000b', now() - interval '1 hour', 'goal_complete', '{"goal_type": "hydration"}');

-- ---------------------------------------------------------------- user A (authenticated)
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "0a000000-0000-4000-8000-00000000000a", "role": "authenticated"}', true);

select results_eq(
    $$select id from public.engagement_events order by id$$,
    $$values ('a0000000-0000-4000-8000-0000000000a1'::uuid), ('a0000000-0000-4000-8000-0000000000a2'::uuid)$$,
    'user A | select all events | sees exactly A''s own 2 events');
select is_empty(
    $$select id from public.engagement_events where user_id = '0b000000-0000-4000-8000-00000000000b'$$,
    'user A | select B''s events by user_id | sees none');
select is_empty(
    $$select id from public.engagement_events where id = 'b0000000-0000-4000-8000-0000000000b1'$$,
    'user A | select B''s event by its id | sees none');
select results_eq(
    $$with changed as (update public.engagement_events set is_deleted = true
                       where user_id = '0b000000-0000-4000-8000-00000000000b' returning id)
      select count(*)::int from changed$$,
    array[0],
    'user A | soft-delete B''s events | 0 rows changed');
select throws_ok(
    $$update public.engagement_events set value = '{"steps": 1}' where user_id = '0b000000-0000-4000-8000-00000000000b'$$,
    '42501', null,
    'user A | update value of B''s events | refused (42501)');
select throws_ok(
    $$delete from public.engagement_events where user_id = '0b000000-0000-4000-8000-00000000000b'$$,
    '42501', null,
    'user A | delete B''s events | refused (42501)');
select throws_ok(
    $$insert into public.engagement_events (user_id, event_type) values ('0b000000-0000-4000-8000-00000000000b', 'app_open')$$,
    '42501', null,
    'user A | insert an event for B | refused by policy (42501)');
select throws_ok(
    $$update public.engagement_events set user_id = '0b000000-0000-4000-8000-00000000000b' where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | move own event to B (change user_id) | refused (42501)');
select throws_ok(
    $$update public.engagement_events set value = '{"platform": "web"}' where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | change value of own event | refused (42501)');
select throws_ok(
    $$update public.engagement_events set event_type = 'goal_complete' where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | change event_type of own event | refused (42501)');
select throws_ok(
    $$update public.engagement_events set "timestamp" = now() - interval '1 day' where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | change timestamp of own event | refused (42501)');
select throws_ok(
    $$update public.engagement_events set id = gen_random_uuid() where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | change id of own event | refused (42501)');
select throws_ok(
    $$delete from public.engagement_events where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    '42501', null,
    'user A | hard-delete own event | refused (42501): only service_role deletes');
select throws_ok(
    $$insert into public.engagement_events (user_id, event_type, is_deleted) values ('0a000000-0000-4000-8000-00000000000a', 'app_open', true)$$,
    '42501', null,
    'user A | insert own event with is_deleted set | refused (42501)');
select results_eq(
    $$with added as (insert into public.engagement_events (id, user_id, event_type, value)
                     values ('a0000000-0000-4000-8000-0000000000a3', '0a000000-0000-4000-8000-00000000000a', 'app_open', '{"platform": "web"}')
                     returning user_id)
      select user_id from added$$,
    $$values ('0a000000-0000-4000-8000-00000000000a'::uuid)$$,
    'user A | insert own event | stored as A''s');
select results_eq(
    $$with changed as (update public.engagement_events set is_deleted = true
                       where id = 'a0000000-0000-4000-8000-0000000000a3' returning is_deleted)
      select is_deleted from changed$$,
    array[true],
    'user A | soft-delete own event | 1 row marked deleted');
select throws_ok(
    $$update public.engagement_events set is_deleted = false where id = 'a0000000-0000-4000-8000-0000000000a3'$$,
    '42501', null,
    'user A | restore own soft-deleted event | refused (42501): soft delete is one-way for users');

-- ---------------------------------------------------------------- user B (authenticated)
select set_config('request.jwt.claims', '{"sub": "0b000000-0000-4000-8000-00000000000b", "role": "authenticated"}', true);
select results_eq(
    $$select count(*)::int from public.engagement_events$$,
    array[2],
    'user B | select all events | sees exactly B''s own 2 events');
select is_empty(
    $$select id from public.engagement_events where user_id = '0a000000-0000-4000-8000-00000000000a'$$,
    'user B | select A''s events, including the one A just wrote | sees none');

-- ------------------------------------------------ authenticated role without a user (no sub)
select set_config('request.jwt.claims', '{"role": "authenticated"}', true);
select is_empty(
    $$select id from public.engagement_events$$,
    'authenticated without sub | select all events | sees none');
select throws_ok(
    $$insert into public.engagement_events (user_id, event_type) values ('0a000000-0000-4000-8000-00000000000a', 'app_open')$$,
    '42501', null,
    'authenticated without sub | insert an event for A | refused by policy (42501)');

-- ---------------------------------------------------------------- anon
reset role;
set local role anon;
select set_config('request.jwt.claims', '{"role": "anon"}', true);
select throws_ok($$select id from public.engagement_events$$, '42501', null,
    'anon | select events | refused (42501): anon has no privilege');
select throws_ok(
    $$insert into public.engagement_events (user_id, event_type) values ('0a000000-0000-4000-8000-00000000000a', 'app_open')$$,
    '42501', null, 'anon | insert an event for A | refused (42501)');
select throws_ok($$update public.engagement_events set is_deleted = true$$, '42501', null,
    'anon | soft-delete events | refused (42501)');
select throws_ok($$delete from public.engagement_events$$, '42501', null,
    'anon | delete events | refused (42501)');
-- anon carrying a forged user claim still has no privilege.
select set_config('request.jwt.claims', '{"sub": "0a000000-0000-4000-8000-00000000000a", "role": "anon"}', true);
select throws_ok($$select id from public.engagement_events$$, '42501', null,
    'anon with A''s sub in its claims | select events | refused (42501)');

-- ---------------------------------------------------------------- service_role
reset role;
set local role service_role;
select set_config('request.jwt.claims', '{"role": "service_role"}', true);
select lives_ok(
    $$insert into public.engagement_events (id, user_id, event_type, value)
      values ('b0000000-0000-4000-8000-0000000000b3', '0b000000-0000-4000-8000-00000000000b', 'steps_import', '{"steps": 10}')$$,
    'service_role | insert an event for B | stored');
select results_eq(
    $$select count(*)::int from public.engagement_events where user_id in ('0a000000-0000-4000-8000-00000000000a', '0b000000-0000-4000-8000-00000000000b')$$,
    array[6],
    'service_role | select all events | sees every user''s events (6)');
select results_eq(
    $$with gone as (delete from public.engagement_events where id = 'b0000000-0000-4000-8000-0000000000b3' returning id) select count(*)::int from gone$$,
    array[1],
    'service_role | delete one of B''s events | 1 row deleted');

-- ------------------------------------------------ what the refused attempts left behind
reset role;
select results_eq(
    $$select count(*)::int from public.engagement_events where user_id = '0b000000-0000-4000-8000-00000000000b' and not is_deleted$$,
    array[2],
    'table owner | count B''s live events after A''s attempts | both still there, not soft-deleted');
select results_eq(
    $$select value from public.engagement_events where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    $$values ('{"platform": "ios"}'::jsonb)$$,
    'table owner | read A''s event after refused changes | value unchanged');
select results_eq(
    $$select user_id from public.engagement_events where id = 'a0000000-0000-4000-8000-0000000000a1'$$,
    $$values ('0a000000-0000-4000-8000-00000000000a'::uuid)$$,
    'table owner | read A''s event after refused changes | still A''s');
select is_empty(
    $$select id from public.engagement_events where event_type = 'app_open' and user_id = '0a000000-0000-4000-8000-00000000000a' and is_deleted and id <> 'a0000000-0000-4000-8000-0000000000a3'$$,
    'table owner | look for rows inserted by refused attempts | none');

-- ------------------------------------------------ a deleted user's events are gone
delete from auth.users where id = '0b000000-0000-4000-8000-00000000000b';
select is_empty(
    $$select id from public.engagement_events where user_id = '0b000000-0000-4000-8000-00000000000b'$$,
    'table owner | delete user B from auth.users | all of B''s events deleted by the cascade');
select results_eq(
    $$select count(*)::int from public.engagement_events where user_id = '0a000000-0000-4000-8000-00000000000a'$$,
    array[3],
    'table owner | delete user B from auth.users | A''s 3 events untouched');
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "0b000000-0000-4000-8000-00000000000b", "role": "authenticated"}', true);
select is_empty($$select id from public.engagement_events$$,
    'deleted user B (token still valid) | select all events | sees none');

select * from finish();
rollback;
