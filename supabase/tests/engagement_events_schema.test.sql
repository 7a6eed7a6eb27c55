-- Shape of public.engagement_events: columns, defaults, keys, indexes, checks, RLS, grants,
-- Realtime. Runs with `supabase test db` and with the project's pytest suite.
begin;
create extension if not exists pgtap with schema extensions;
select plan(60);

select has_table('public', 'engagement_events', 'table public.engagement_events exists');
select columns_are('public', 'engagement_events',
    array['id', 'user_id', 'timestamp', 'event_type', 'value', 'is_deleted', 'deleted_at', 'revision'],
    'the six designed columns, deleted_at (20241206) and revision (20241230), nothing else');
select col_is_null('public', 'engagement_events', 'deleted_at', 'deleted_at is null while the event is live');
select col_type_is('public', 'engagement_events', 'deleted_at', 'timestamp with time zone', 'deleted_at is timestamptz');

select col_type_is('public', 'engagement_events', 'id', 'uuid', 'id is uuid');
select col_type_is('public', 'engagement_events', 'user_id', 'uuid', 'user_id is uuid');
select col_type_is('public', 'engagement_events', 'timestamp', 'timestamp with time zone', 'timestamp is timestamptz');
select col_type_is('public', 'engagement_events', 'event_type', 'text', 'event_type is text');
select col_type_is('public', 'engagement_events', 'value', 'jsonb', 'value is jsonb');
select col_type_is('public', 'engagement_events', 'is_deleted', 'boolean', 'is_deleted is boolean');

select col_not_null('public', 'engagement_events', 'id', 'id is not null');
select col_not_null('public', 'engagement_events', 'user_id', 'user_id is not null');
select col_not_null('public', 'engagement_events', 'timestamp', 'timestamp is not null');
select col_not_null('public', 'engagement_events', 'event_type', 'event_type is not null');
select col_not_null('public', 'engagement_events', 'value', 'value is not null');
select col_not_null('public', 'engagement_events', 'is_deleted', 'is_deleted is not null');

select col_default_is('public', 'engagement_events', 'id', 'gen_random_uuid()', 'id defaults to gen_random_uuid()');
select col_default_is('public', 'engagement_events', 'timestamp', 'now()', 'timestamp defaults to now()');
select col_default_is('public', 'engagement_events', 'value', '{}'::text, 'value defaults to {}');
select col_default_is('public', 'engagement_events', 'is_deleted', 'false', 'is_deleted defaults to false');
select col_hasnt_default('public', 'engagement_events', 'user_id', 'user_id has no default');
select col_hasnt_default('public', 'engagement_events', 'event_type', 'event_type has no default');

select col_is_pk('public', 'engagement_events', 'id', 'id is the primary key');
select fk_ok('public', 'engagement_events', 'user_id', 'auth', 'users', 'id', 'user_id references auth.users(id)');
select results_eq(
    $$select confdeltype::text from pg_constraint where conname = 'engagement_events_user_id_fkey'$$,
    array['c'],
    'the foreign key cascades on delete');

select indexes_are('public', 'engagement_events',
    array['engagement_events_pkey', 'idx_engagement_events_user_timestamp',
          'idx_engagement_events_value', 'idx_engagement_events_event_type',
          'idx_engagement_events_deleted_at'],
    'the primary key, the three named indexes and the purge index, nothing else');
select is(pg_get_indexdef('public.idx_engagement_events_user_timestamp'::regclass),
    'CREATE INDEX idx_engagement_events_user_timestamp ON public.engagement_events USING btree (user_id, "timestamp" DESC)',
    'timeline index on (user_id, timestamp desc)');
select index_is_type('public', 'engagement_events', 'idx_engagement_events_value', 'gin', 'payload index is GIN');
select is(pg_get_indexdef('public.idx_engagement_events_event_type'::regclass),
    'CREATE INDEX idx_engagement_events_event_type ON public.engagement_events USING btree (event_type, "timestamp" DESC)',
    'event_type index on (event_type, timestamp desc) (20241220)');

-- Check constraints, exercised.
insert into auth.users (id, aud, role, email) values
    ('5c000000-0000-4000-8000-000000000001', 'authenticated', 'authenticated', 'schema@example.test');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', '')$$,
    '23514', null, 'event_type: empty is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'App_Open')$$,
    '23514', null, 'event_type: upper case is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', '1st_open')$$,
    '23514', null, 'event_type: a leading digit is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', '_open')$$,
    '23514', null, 'event_type: a leading underscore is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'app-open')$$,
    '23514', null, 'event_type: a hyphen is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'app open')$$,
    '23514', null, 'event_type: a space is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', E'app_open\n')$$,
    '23514', null, 'event_type: a trailing newline is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'a' || repeat('b', 64))$$,
    '23514', null, 'event_type: 65 characters is rejected');
select lives_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'a' || repeat('b', 63))$$,
    'event_type: 64 characters is accepted');
select lives_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'x')$$,
    'event_type: one letter is accepted');
select lives_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'steps_import_v2')$$,
    'event_type: snake case with digits is accepted');
select throws_ok($$insert into public.engagement_events (user_id, event_type, "timestamp") values ('5c000000-0000-4000-8000-000000000001', 'app_open', now() + interval '6 minutes')$$,
    '23514', null, 'timestamp: 6 minutes in the future is rejected');
select lives_ok($$insert into public.engagement_events (user_id, event_type, "timestamp") values ('5c000000-0000-4000-8000-000000000001', 'app_open', now() + interval '4 minutes')$$,
    'timestamp: 4 minutes in the future is accepted (clock skew)');
select lives_ok($$insert into public.engagement_events (user_id, event_type, "timestamp") values ('5c000000-0000-4000-8000-000000000001', 'app_open', timestamptz '2019-03-10 02:30:00+00')$$,
    'timestamp: the past is accepted');
select throws_ok($$insert into public.engagement_events (user_id, event_type, value) values ('5c000000-0000-4000-8000-000000000001', 'app_open', '[1, 2]')$$,
    '23514', null, 'value: a JSON array is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type, value) values ('5c000000-0000-4000-8000-000000000001', 'app_open', '"text"')$$,
    '23514', null, 'value: a JSON string is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-0000000000ff', 'app_open')$$,
    '23503', null, 'user_id: a user that does not exist is rejected');
select results_eq(
    $$with added as (insert into public.engagement_events (user_id, event_type) values ('5c000000-0000-4000-8000-000000000001', 'app_open') returning value, is_deleted, "timestamp" = now() as now_default)
      select value, is_deleted, now_default from added$$,
    $$values ('{}'::jsonb, false, true)$$,
    'defaults: an event with only user and type gets {}, not deleted, now()');
select lives_ok($$delete from auth.users where id = '5c000000-0000-4000-8000-000000000001'$$, 'deleting a user with events works');
select is_empty($$select 1 from public.engagement_events where user_id = '5c000000-0000-4000-8000-000000000001'$$,
    'deleting a user deletes their events (cascade)');

-- Row-level security and its policies.
select ok((select relrowsecurity from pg_class where oid = 'public.engagement_events'::regclass), 'RLS is enabled');
select policies_are('public', 'engagement_events',
    array['Users can view own events', 'Users can insert own events',
          'Service role can insert any events', 'Users can soft-delete own events'],
    'exactly the four policies');
select policy_roles_are('public', 'engagement_events', 'Users can view own events', array['authenticated'], 'view policy is TO authenticated');
select policy_roles_are('public', 'engagement_events', 'Users can insert own events', array['authenticated'], 'insert policy is TO authenticated');
select policy_roles_are('public', 'engagement_events', 'Service role can insert any events', array['service_role'], 'service insert policy is TO service_role');
select policy_roles_are('public', 'engagement_events', 'Users can soft-delete own events', array['authenticated'], 'soft-delete policy is TO authenticated');

-- Privileges: anon nothing; authenticated reads, inserts some columns, updates only is_deleted.
select table_privs_are('public', 'engagement_events', 'anon', array[]::text[], 'anon has no privilege on the table');
select table_privs_are('public', 'engagement_events', 'authenticated', array['SELECT'], 'authenticated: SELECT on the whole table only');
select table_privs_are('public', 'engagement_events', 'service_role', array['DELETE', 'INSERT', 'SELECT', 'UPDATE'], 'service_role: select, insert, update, delete');
select is(
    (select string_agg(privilege_type || ' ' || column_name, ', ' order by privilege_type, column_name)
       from information_schema.column_privileges
      where table_schema = 'public' and table_name = 'engagement_events' and grantee = 'authenticated'
        and privilege_type in ('INSERT', 'UPDATE')),
    'INSERT event_type, INSERT id, INSERT timestamp, INSERT user_id, INSERT value, UPDATE is_deleted',
    'authenticated may insert id, user_id, timestamp, event_type, value and update only is_deleted');

-- Realtime.
select results_eq(
    $$select count(*)::int from pg_publication_tables where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'engagement_events'$$,
    array[1], 'the table is in the supabase_realtime publication');

select * from finish();
rollback;
