-- =============================================================================================
-- Migration: 20241225000000_erasure_any_spelling
-- Purpose:   GDPR erasure finds a user however their id is spelt. UUID parsers accept more than
--            the 8-4-4-4-12 lower-case form: upper or mixed case, no hyphens (or hyphens
--            anywhere: Python's uuid.UUID removes every one), braces `{...}`, a `urn:uuid:`
--            prefix. A rejected event may carry its user's id in any of these spellings, and
--            after erasure nothing may still name the user.
--            - private.engagement_uuid_of_any_spelling(text): the UUID such a spelling names,
--              else null;
--            - private.engagement_failure_names_user(event text, target uuid): whether the
--              text of a stored event names `target` in any such spelling;
--            - public.record_engagement_failures fills user_id (and event_id) from any
--              accepted spelling, not only the hyphenated one;
--            - public.erase_engagement_user and the trigger on auth.users match on user_id
--              and on the spelling-insensitive text match (an event whose user_id is not a
--              string at the top, or that names the user elsewhere);
--            - failures already stored get their user_id filled from their event's user_id.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- =============================================================================================

-- ---------------------------------------------------------------------------------------------
-- Spellings. Python's uuid.UUID(text) removes every `urn:` and `uuid:`, strips braces at both
-- ends and removes every hyphen, then wants 32 hexadecimal digits; PostgreSQL's uuid input
-- accepts a subset of that. Case is ignored here (a superset of both parsers: erasure errs on
-- the side of removing).
-- ---------------------------------------------------------------------------------------------
create or replace function private.engagement_uuid_of_any_spelling(spelling text)
returns uuid
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
    select case when bare ~ '^[0-9a-f]{32}$' then bare::uuid end
    from (
        select pg_catalog.replace(
                   pg_catalog.btrim(
                       pg_catalog.replace(
                           pg_catalog.replace(pg_catalog.lower(spelling), 'urn:', ''),
                           'uuid:', ''),
                       '{}'),
                   '-', '') as bare
    ) as s
$$;

comment on function private.engagement_uuid_of_any_spelling(text) is
    'The UUID a text names in any spelling a UUID parser accepts (case, hyphens, braces, '
    'urn:uuid: prefix), else null.';

-- The text of a stored event names `target` when, with case, hyphens, `urn:` and `uuid:` taken
-- away, it holds the id's 32 hexadecimal digits. Braces need no handling: they stand outside
-- the digits. The event text is ASCII-escaped JSON written by the functions, in which hex
-- digits and hyphens are never escaped.
create or replace function private.engagement_failure_names_user(event text, target uuid)
returns boolean
language sql
immutable
strict
parallel safe
set search_path = ''
as $$
    select pg_catalog.strpos(
               pg_catalog.replace(
                   pg_catalog.replace(
                       pg_catalog.replace(pg_catalog.lower(event), 'urn:', ''),
                       'uuid:', ''),
                   '-', ''),
               pg_catalog.replace(target::text, '-', '')) > 0
$$;

comment on function private.engagement_failure_names_user(text, uuid) is
    'Whether a dead-lettered event''s text names the user `target` in any spelling a UUID '
    'parser accepts. What GDPR erasure matches besides the user_id column.';

revoke execute on function private.engagement_uuid_of_any_spelling(text)
    from public, anon, authenticated;
revoke execute on function private.engagement_failure_names_user(text, uuid)
    from public, anon, authenticated;
-- record_engagement_failures and erase_engagement_user run as service_role (SECURITY INVOKER).
-- The trigger function on auth.users is SECURITY DEFINER and runs as its owner.
grant execute on function private.engagement_uuid_of_any_spelling(text) to service_role;
grant execute on function private.engagement_failure_names_user(text, uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Writing failures: as in 20241204000000_dead_letter, with event_id and user_id read from any
-- accepted spelling. Returns the number of failures newly stored.
-- ---------------------------------------------------------------------------------------------
create or replace function public.record_engagement_failures(failures jsonb)
returns integer
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    stored integer;
begin
    if failures is null or pg_catalog.jsonb_typeof(failures) <> 'array' then
        raise exception 'failures must be a JSON array'
            using errcode = '22023';
    end if;

    with incoming as (
        select f ->> 'request_id' as request_id,
               f ->> 'credential_type' as credential_type,
               (f ->> 'index')::integer as event_index,
               private.engagement_uuid_of_any_spelling(f ->> 'event_id') as event_id,
               private.engagement_uuid_of_any_spelling(f ->> 'user_id') as user_id,
               f ->> 'event' as event,
               coalesce(f -> 'errors', '[]'::jsonb) as errors,
               f ->> 'default_timezone' as default_timezone
        from pg_catalog.jsonb_array_elements(failures) as f
    ),
    fingerprinted as (
        -- One row per fingerprint: a batch may repeat the same bad event.
        select distinct on (fingerprint) *
        from (
            select i.*,
                   pg_catalog.encode(
                       extensions.digest(
                           pg_catalog.convert_to(
                               i.event || E'\n' || i.errors::text || E'\n'
                                   || coalesce(i.default_timezone, ''),
                               'UTF8'),
                           'sha256'),
                       'hex') as fingerprint
            from incoming i
        ) as x
        order by fingerprint, event_index
    ),
    written as (
        insert into private.engagement_event_failures as f
            (fingerprint, request_id, credential_type, event_index, event_id, user_id,
             event, errors, default_timezone)
        select fingerprint, request_id, credential_type, event_index, event_id, user_id,
               event, errors, default_timezone
        from fingerprinted
        on conflict (fingerprint) do update
            set last_failed_at = pg_catalog.now(),
                attempts = f.attempts + 1,
                request_id = excluded.request_id,
                credential_type = excluded.credential_type,
                event_index = excluded.event_index,
                -- Failing again after a replay makes it pending again.
                replayed_at = null,
                replay_request_id = null
        returning (xmax = 0) as inserted
    )
    select pg_catalog.count(*) filter (where inserted) into stored from written;
    return stored;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Erasure: the user's events, and every failure whose user_id is the user or whose text names
-- the user in any spelling.
-- ---------------------------------------------------------------------------------------------
create or replace function public.erase_engagement_user(target uuid)
returns jsonb
language plpgsql
volatile
security invoker
set search_path = ''
as $$
declare
    events_removed bigint;
    failures_removed bigint;
begin
    if target is null then
        raise exception 'target must be a user id' using errcode = '22023';
    end if;

    delete from public.engagement_events e where e.user_id = target;
    get diagnostics events_removed = row_count;

    -- Failures are kept as sent, so a user id may also sit in an event whose user_id was not a
    -- string, or elsewhere in the event: match the text as well, in any spelling.
    delete from private.engagement_event_failures f
    where f.user_id = target
       or private.engagement_failure_names_user(f.event, target);
    get diagnostics failures_removed = row_count;

    return pg_catalog.jsonb_build_object(
        'user_id', target,
        'events', events_removed,
        'failures', failures_removed,
        'erased_at', pg_catalog.now()
    );
end
$$;

create or replace function private.erase_failures_of_deleted_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
    delete from private.engagement_event_failures f
    where f.user_id = old.id
       or private.engagement_failure_names_user(f.event, old.id);
    return old;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Failures stored before this migration: user_id from their event's user_id (a string) in any
-- spelling.
-- An event text that jsonb cannot hold (\u0000, lone surrogates) keeps user_id null; erasure
-- still finds it by its text.
-- ---------------------------------------------------------------------------------------------
do $backfill$
declare
    failure record;
    named uuid;
begin
    for failure in
        select f.id, f.event from private.engagement_event_failures f where f.user_id is null
    loop
        begin
            named := case when pg_catalog.jsonb_typeof(failure.event::jsonb -> 'user_id') = 'string'
                          then private.engagement_uuid_of_any_spelling(
                                   failure.event::jsonb ->> 'user_id')
                     end;
        exception when others then
            named := null;
        end;
        if named is not null then
            update private.engagement_event_failures f set user_id = named where f.id = failure.id;
        end if;
    end loop;
end
$backfill$;
