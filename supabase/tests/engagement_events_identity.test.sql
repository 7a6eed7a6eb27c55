-- Event identity, revisions and deletions (migration 20241230): the id key, derived ids, the
-- revision column and public.ingest_engagement_events, the write path of both sinks.
-- Runs with `supabase test db` and with the project's pytest suite. API roles are tried the
-- way the Data API runs requests: `set local role <role>` plus `request.jwt.claims`.
begin;
create extension if not exists pgtap with schema extensions;
select plan(94);

insert into auth.users (id, aud, role, email, created_at, updated_at)
values ('1d000000-0000-4000-8000-00000000000a', 'authenticated', 'authenticated', 'identity-a@example.test', now(), now()),
       ('1d000000-0000-4000-8000-00000000000b', 'authenticated', 'authenticated', 'identity-b@example.test', now(), now());

-- ---------------------------------------------------------------- the key
select has_table('private', 'engagement_id_key', 'the id key table exists');
select results_eq($$select count(*)::int, min(octet_length(key)) from private.engagement_id_key$$,
    $$values (1, 32)$$, 'one key of 32 bytes');
select throws_ok($$insert into private.engagement_id_key (singleton, key) values (true, extensions.gen_random_bytes(32))$$,
    '23505', null, 'a second key cannot be added');
select throws_ok($$update private.engagement_id_key set key = extensions.gen_random_bytes(16)$$,
    '23514', null, 'the key stays 32 bytes');
select ok((select relrowsecurity from pg_class where oid = 'private.engagement_id_key'::regclass),
    'RLS is enabled on the key table');
select is_empty($$select policyname from pg_policies where schemaname = 'private' and tablename = 'engagement_id_key'$$,
    'the key table has no policy: nobody but its owner reads it');
select table_privs_are('private', 'engagement_id_key', 'anon', array[]::text[], 'anon: no privilege on the key');
select table_privs_are('private', 'engagement_id_key', 'authenticated', array[]::text[], 'authenticated: no privilege on the key');
select table_privs_are('private', 'engagement_id_key', 'service_role', array[]::text[], 'service_role: no privilege on the key (it computes ids through the function)');

-- ---------------------------------------------------------------- derived ids
select is(private.engagement_event_id('steps|garmin|2024-12-01'), private.engagement_event_id('steps|garmin|2024-12-01'),
    'the same identity text gives the same id');
select isnt(private.engagement_event_id('steps|garmin|2024-12-01'), private.engagement_event_id('steps|garmin|2024-12-02'),
    'another identity text gives another id');
select is(substr(private.engagement_event_id('x')::text, 15, 1), '8', 'a derived id is a UUID of version 8');
select ok(substr(private.engagement_event_id('x')::text, 20, 1) in ('8', '9', 'a', 'b'), 'a derived id has the RFC 9562 variant');
select is(
    private.engagement_event_id('steps|garmin|2024-12-01'),
    (select encode(set_byte(set_byte(substr(m, 1, 16), 6, (get_byte(m, 6) & 15) | 128), 8, (get_byte(m, 8) & 63) | 128), 'hex')::uuid
       from (select extensions.hmac(convert_to('steps|garmin|2024-12-01', 'UTF8'), key, 'sha256') as m from private.engagement_id_key) as d),
    'a derived id is HMAC-SHA256 of the identity text under the key, first 16 bytes');
select is(private.engagement_event_ids(array['a', null, 'b']),
    array[private.engagement_event_id('a'), null, private.engagement_event_id('b')],
    'the batch form gives the same ids in order, null for null');
select is(private.engagement_event_id(convert_from('\xc3a9'::bytea, 'UTF8')),
    (select encode(set_byte(set_byte(substr(m, 1, 16), 6, (get_byte(m, 6) & 15) | 128), 8, (get_byte(m, 8) & 63) | 128), 'hex')::uuid
       from (select extensions.hmac('\xc3a9'::bytea, key, 'sha256') as m from private.engagement_id_key) as d),
    'identity text is hashed as UTF-8');

-- ---------------------------------------------------------------- the revision column
select has_column('public', 'engagement_events', 'revision', 'engagement_events.revision exists');
select col_type_is('public', 'engagement_events', 'revision', 'bigint', 'revision is bigint');
select col_is_null('public', 'engagement_events', 'revision', 'revision is null when none was sent');
select throws_ok($$insert into public.engagement_events (user_id, event_type, revision) values ('1d000000-0000-4000-8000-00000000000a', 'app_open', -1)$$,
    '23514', null, 'revision: -1 is rejected');
select throws_ok($$insert into public.engagement_events (user_id, event_type, revision) values ('1d000000-0000-4000-8000-00000000000a', 'app_open', 9007199254740992)$$,
    '23514', null, 'revision: 2^53 is rejected');
select lives_ok($$insert into public.engagement_events (user_id, event_type, revision) values ('1d000000-0000-4000-8000-00000000000a', 'app_open', 9007199254740991)$$,
    'revision: 2^53-1 is accepted');

-- ---------------------------------------------------------------- privileges of the functions
select ok(not has_function_privilege('anon', 'public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer)', 'execute'),
    'anon cannot execute ingest_engagement_events');
select ok(not has_function_privilege('authenticated', 'public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer)', 'execute'),
    'authenticated cannot execute ingest_engagement_events');
select ok(has_function_privilege('service_role', 'public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer)', 'execute'),
    'service_role executes ingest_engagement_events');
select ok(not has_function_privilege('anon', 'private.engagement_event_id(text)', 'execute')
          and not has_function_privilege('anon', 'private.engagement_event_ids(text[])', 'execute'),
    'anon cannot execute the id functions');
select ok(not has_function_privilege('authenticated', 'private.engagement_event_id(text)', 'execute')
          and not has_function_privilege('authenticated', 'private.engagement_event_ids(text[])', 'execute'),
    'authenticated cannot execute the id functions');
select ok(has_function_privilege('service_role', 'private.engagement_event_id(text)', 'execute')
          and has_function_privilege('service_role', 'private.engagement_event_ids(text[])', 'execute'),
    'service_role executes the id functions');
select ok(not has_function_privilege('anon', 'public.ingest_staged_engagement_events(boolean, text, integer, integer, integer)', 'execute')
          and not has_function_privilege('authenticated', 'public.ingest_staged_engagement_events(boolean, text, integer, integer, integer)', 'execute')
          and has_function_privilege('service_role', 'public.ingest_staged_engagement_events(boolean, text, integer, integer, integer)', 'execute'),
    'ingest_staged_engagement_events: service_role only');
select ok(not has_function_privilege('anon', 'private.ingest_engagement_batch(boolean, jsonb, boolean, text, integer, integer, integer)', 'execute')
          and not has_function_privilege('authenticated', 'private.ingest_engagement_batch(boolean, jsonb, boolean, text, integer, integer, integer)', 'execute')
          and not has_function_privilege('anon', 'private.engagement_batch_rows(boolean, jsonb)', 'execute')
          and not has_function_privilege('authenticated', 'private.engagement_batch_rows(boolean, jsonb)', 'execute'),
    'anon and authenticated cannot execute the decision or its batch reader');
select is((select prosecdef from pg_proc where oid = 'public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer)'::regprocedure),
    false, 'ingest_engagement_events is SECURITY INVOKER');
select is((select proconfig from pg_proc where oid = 'public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer)'::regprocedure),
    array['search_path=""'], 'ingest_engagement_events sets an empty search_path');

-- ---------------------------------------------------------------- the rules, as service_role
set local role service_role;
select set_config('request.jwt.claims', '{"role": "service_role"}', true);

select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 100}}]'),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a new event is inserted');
select results_eq($$select user_id, value, revision, is_deleted from public.engagement_events where id = private.engagement_event_id('s1')$$,
    $$values ('1d000000-0000-4000-8000-00000000000a'::uuid, '{"steps": 100}'::jsonb, null::bigint, false)$$,
    'it is stored under the id derived from its identity text');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 150}}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'without revision, a second version is a duplicate');
select is((select value from public.engagement_events where id = private.engagement_event_id('s1')), '{"steps": 100}'::jsonb,
    'without revision, the first stored version stands');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T09:00:00Z", "value": {"steps": 500}, "revision": 5}]'),
    '{"inserted": 0, "updated": 1, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a revision over a row without one updates it');
select results_eq($$select "timestamp", value, revision from public.engagement_events where id = private.engagement_event_id('s1')$$,
    $$values ('2024-12-01T09:00:00Z'::timestamptz, '{"steps": 500}'::jsonb, 5::bigint)$$,
    'the update replaced timestamp, value and revision');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T09:00:00Z", "value": {"steps": 555}, "revision": 5}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'an equal revision is a duplicate');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:30:00Z", "value": {"steps": 300}, "revision": 3}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'an older revision arriving late is a duplicate');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T10:00:00Z", "value": {"steps": 999}}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a version without revision over a revised row is a duplicate');
select results_eq($$select value, revision from public.engagement_events where id = private.engagement_event_id('s1')$$,
    $$values ('{"steps": 500}'::jsonb, 5::bigint)$$,
    'after equal, older and unrevised versions the row still holds revision 5');

select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T11:00:00Z", "value": {"steps": 700}, "revision": 7},
      {"index": 1, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T12:00:00Z", "value": {"steps": 900}, "revision": 9},
      {"index": 2, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T11:30:00Z", "value": {"steps": 800}, "revision": 8}]'),
    '{"inserted": 0, "updated": 1, "deleted": 0, "duplicates": 2, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'three versions in one batch: decided once, the others are duplicates');
select results_eq($$select value, revision from public.engagement_events where id = private.engagement_event_id('s1')$$,
    $$values ('{"steps": 900}'::jsonb, 9::bigint)$$,
    'the highest revision of the batch won, whatever its place');
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "s2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 1}},
      {"index": 1, "identity": "s2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 2}}]'),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'two versions without revision in one batch: one row');
select is((select value from public.engagement_events where id = private.engagement_event_id('s2')), '{"steps": 1}'::jsonb,
    'without revisions, the first of the batch stands');

-- deletions
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T12:00:00Z", "value": {}, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 1, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a deletion without revision marks a revised row deleted');
select results_eq($$select is_deleted, deleted_at is not null, value, revision from public.engagement_events where id = private.engagement_event_id('s1')$$,
    $$values (true, true, '{"steps": 900}'::jsonb, 9::bigint)$$,
    'the row is soft-deleted with deleted_at; its value stays');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T13:00:00Z", "value": {"steps": 1000}, "revision": 10}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a newer revision after the deletion is a duplicate');
select is((select is_deleted from public.engagement_events where id = private.engagement_event_id('s1')), true,
    'deletions are final: imports never undo one');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T13:00:00Z", "value": {}, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'deleting a deleted row again is a duplicate');
select is(public.ingest_engagement_events('[{"index": 0, "id": "1d000000-0000-4000-8000-0000000000d1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "revision": 4, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 1, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a deletion of an id not yet stored stores it deleted, counted deleted');
select results_eq($$select is_deleted, deleted_at is not null, revision from public.engagement_events where id = '1d000000-0000-4000-8000-0000000000d1'$$,
    $$values (true, true, 4::bigint)$$,
    'the row stored deleted has deleted_at and the deletion''s revision');
select is(public.ingest_engagement_events('[{"index": 0, "id": "1d000000-0000-4000-8000-0000000000d1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T07:00:00Z", "value": {"steps": 10}, "revision": 2}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'an older version arriving after its deletion cannot bring it back');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s3", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 30}, "revision": 30}]')->>'inserted',
    '1', 'setup: a row with revision 30');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s3", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "revision": 30, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a deletion whose revision is not greater than the row''s is a duplicate');
select is((select is_deleted from public.engagement_events where id = private.engagement_event_id('s3')), false,
    'that row is still live');
select is(public.ingest_engagement_events('[{"index": 0, "identity": "s3", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "revision": 31, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 1, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a deletion with a greater revision applies');
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "s4", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {"steps": 40}, "revision": 40},
      {"index": 1, "identity": "s4", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 1, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'a version and a deletion without revision in one batch: the deletion is decided, as it would be in two batches');

-- unknown users and other users' ids
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "u1", "user_id": "1d000000-0000-4000-8000-0000000000ff", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "identity": "u2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]'),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [0], "conflicts": [], "retry_after": null}',
    'an event of an unknown user is reported by index and not written; the rest is');
select is_empty($$select 1 from public.engagement_events where user_id = '1d000000-0000-4000-8000-0000000000ff'$$,
    'nothing is stored for the unknown user');
select is(public.ingest_engagement_events('[{"index": 0, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {"platform": "ios"}}]')->>'inserted',
    '1', 'setup: A stores an event with a sender id');
select is(public.ingest_engagement_events('[{"index": 3, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {"platform": "web"}, "revision": 99}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [3], "retry_after": null}',
    'B sending A''s id is a conflict, never a duplicate');
select is(public.ingest_engagement_events('[{"index": 0, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "deleted": true}]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [0], "retry_after": null}',
    'B deleting A''s id is a conflict');
select results_eq($$select user_id, value, revision, is_deleted from public.engagement_events where id = '1d000000-0000-4000-8000-0000000000c1'$$,
    $$values ('1d000000-0000-4000-8000-00000000000a'::uuid, '{"platform": "ios"}'::jsonb, null::bigint, false)$$,
    'A''s row is untouched by B''s attempts');
select is(public.ingest_engagement_events('[
      {"index": 0, "id": "1d000000-0000-4000-8000-0000000000c2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "id": "1d000000-0000-4000-8000-0000000000c2", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}, "revision": 5}]'),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [1], "retry_after": null}',
    'one new id from two users in one batch: the lowest index owns it, the other is a conflict');
select is(public.ingest_engagement_events('[
      {"index": 0, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {"platform": "android"}, "revision": 1}]'),
    '{"inserted": 0, "updated": 1, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [0], "retry_after": null}',
    'a stored id: its stored user owns it, even when another user''s event comes first');

-- atomic
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "t1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "id": "1d000000-0000-4000-8000-0000000000c1", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]', true),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [1], "retry_after": null}',
    'atomic with a conflict: the conflict is reported, counts are 0');
select is_empty($$select 1 from public.engagement_events where id = private.engagement_event_id('t1')$$,
    'atomic with a conflict: nothing of the batch is written');
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "t1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "identity": "t2", "user_id": "1d000000-0000-4000-8000-0000000000ff", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]', true),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [1], "conflicts": [], "retry_after": null}',
    'atomic with an unknown user: reported, nothing written');
select is_empty($$select 1 from public.engagement_events where id = private.engagement_event_id('t1')$$,
    'atomic with an unknown user: nothing of the batch is written');
select is(public.ingest_engagement_events('[
      {"index": 0, "identity": "t1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}},
      {"index": 1, "identity": "s2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "steps_import", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]', true),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'atomic without conflicts or unknown users writes the batch');

-- the rate limit in the same call
select is(public.ingest_engagement_events('[{"index": 0, "identity": "r1", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]',
        rate_caller => 'identity-test', rate_requests_per_minute => 1)->>'inserted',
    '1', 'within the rate limit: written');
select ok((public.ingest_engagement_events('[{"index": 0, "identity": "r2", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "value": {}}]',
        rate_caller => 'identity-test', rate_requests_per_minute => 1)->>'retry_after')::int between 1 and 60,
    'over the rate limit: retry_after in seconds');
select is_empty($$select 1 from public.engagement_events where id = private.engagement_event_id('r2')$$,
    'over the rate limit: nothing written');
select is((select events from private.rate_limit_windows where caller = 'identity-test'), 1::bigint,
    'the rate limit counted the events of the call it let through, not the refused one');

-- malformed input is an error, not a guess
select throws_ok($$select public.ingest_engagement_events('{"index": 0}')$$, '22023', null, 'events must be an array');
select throws_ok($$select public.ingest_engagement_events('[{"index": 0, "id": "1d000000-0000-4000-8000-0000000000e1", "identity": "x", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z"}]')$$,
    '22023', null, 'an event with both id and identity is refused');
select throws_ok($$select public.ingest_engagement_events('[{"index": 0, "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z"}]')$$,
    '22023', null, 'an event with neither id nor identity is refused');
select throws_ok($$select public.ingest_engagement_events('[{"index": 0, "identity": "x", "user_id": "1d000000-0000-4000-8000-00000000000a", "event_type": "app_open", "timestamp": "2024-12-01T08:00:00Z", "revision": -1}]')$$,
    '22023', null, 'a negative revision is refused');
select is(public.ingest_engagement_events('[]'),
    '{"inserted": 0, "updated": 0, "deleted": 0, "duplicates": 0, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'an empty batch writes nothing');

-- ---------------------------------------------------------------- a signed-in user
reset role;
set local role authenticated;
select set_config('request.jwt.claims', '{"sub": "1d000000-0000-4000-8000-00000000000a", "role": "authenticated"}', true);
select throws_ok($$select key from private.engagement_id_key$$, '42501', null,
    'user A | read the id key | refused (42501)');
select throws_ok($$select private.engagement_event_id('s1')$$, '42501', null,
    'user A | compute a derived id | refused (42501)');
select throws_ok($$select public.ingest_engagement_events('[]')$$, '42501', null,
    'user A | call ingest_engagement_events | refused (42501)');
select throws_ok(
    $$insert into public.engagement_events (user_id, event_type, revision) values ('1d000000-0000-4000-8000-00000000000a', 'app_open', 1)$$,
    '42501', null, 'user A | insert own event with a revision | refused (42501)');
select throws_ok(
    $$update public.engagement_events set revision = 1000 where id = '1d000000-0000-4000-8000-0000000000c1'$$,
    '42501', null, 'user A | change the revision of own event | refused (42501)');
select results_eq(
    $$with added as (insert into public.engagement_events (id, user_id, event_type, value)
                     values ('1d000000-0000-4000-8000-0000000000a9', '1d000000-0000-4000-8000-00000000000a', 'app_open', '{}')
                     returning revision)
      select revision from added$$,
    $$values (null::bigint)$$,
    'user A | insert own event through the Data API | stored, without revision');
-- The old attack: compute candidate ids of B's event from a public formula (uuid5 of the
-- content in a namespace from the source) and insert them under one's own user_id, reading
-- 23505 as "B has this event". B's derived id comes from the key, so the public formula names
-- no stored row.
reset role;
select is(public.ingest_engagement_events('[{"index": 0, "identity": "[\"1d000000-0000-4000-8000-00000000000b\",\"steps_import\",\"2024-12-01T00:00:00Z\",{\"steps\":8412}]", "user_id": "1d000000-0000-4000-8000-00000000000b", "event_type": "steps_import", "timestamp": "2024-12-01T00:00:00Z", "value": {"steps": 8412}}]')->>'inserted',
    '1', 'setup: B''s steps event, stored under a derived id');
create temporary table public_formula_guess on commit drop as
select encode(set_byte(set_byte(substr(h, 1, 16), 6, (get_byte(h, 6) & 15) | 80), 8, (get_byte(h, 8) & 63) | 128), 'hex')::uuid as id
from (select extensions.digest('\xd659e04cafcf4dd087539d06bf53c340'::bytea
          || convert_to('["1d000000-0000-4000-8000-00000000000b","steps_import","2024-12-01T00:00:00Z",{"steps":8412}]', 'UTF8'), 'sha1') as h) as d;
grant select on public_formula_guess to authenticated;
set local role authenticated;
select lives_ok(
    $$insert into public.engagement_events (id, user_id, event_type) select id, '1d000000-0000-4000-8000-00000000000a', 'app_open' from public_formula_guess$$,
    'user A | insert a row under the id a public formula gives for B''s event | no 23505: the guess names no row of B');
select is_empty($$select 1 from public.engagement_events where user_id = '1d000000-0000-4000-8000-00000000000b'$$,
    'user A | select B''s events | sees none');

-- ---------------------------------------------------------------- Realtime
reset role;
select ok((select pubupdate from pg_publication where pubname = 'supabase_realtime'),
    'the supabase_realtime publication publishes updates (revisions and soft deletions)');
select is((select relreplident::text from pg_class where oid = 'public.engagement_events'::regclass), 'd',
    'replica identity stays DEFAULT: a DELETE change carries only the id');

-- The bulk path: the same decision for rows staged in a temporary table.
set local role service_role;
create temporary table engagement_events_staged (
    "index" integer, id uuid, identity text, user_id uuid, revision bigint, deleted boolean,
    "timestamp" timestamptz, event_type text, value jsonb, ord bigint
) on commit drop;
insert into engagement_events_staged values
    (0, null, 'staged-1', '1d000000-0000-4000-8000-00000000000a', 3, null, '2024-12-01T08:00:00Z', 'steps_import', '{"steps": 30}', 1),
    (1, null, 'staged-1', '1d000000-0000-4000-8000-00000000000a', 4, null, '2024-12-01T08:00:00Z', 'steps_import', '{"steps": 40}', 2);
select is(public.ingest_staged_engagement_events(),
    '{"inserted": 1, "updated": 0, "deleted": 0, "duplicates": 1, "unknown_users": [], "conflicts": [], "retry_after": null}',
    'staged rows are decided as a JSON batch is: one insert, the other version a duplicate');
select is((select value from public.engagement_events where id = private.engagement_event_id('staged-1')), '{"steps": 40}'::jsonb,
    'the staged batch''s highest revision is stored');
reset role;

select * from finish();
rollback;
