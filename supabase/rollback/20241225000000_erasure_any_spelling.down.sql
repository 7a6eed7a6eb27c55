-- Down: 20241225000000_erasure_any_spelling. Puts back the functions of 20241204 and 20241206:
-- failures record user_id and event_id only from the hyphenated spelling, and erasure matches the
-- text of a failure only for the hyphenated lower-case id. user_id values the migration filled in
-- stay (they are correct).
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
               case when (f ->> 'event_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                    then (f ->> 'event_id')::uuid end as event_id,
               case when (f ->> 'user_id') ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                    then (f ->> 'user_id')::uuid end as user_id,
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

    -- Failures are kept as sent, so a user id may also sit in an event whose user_id was not
    -- parsed (e.g. an invalid event that names the user elsewhere): match the text as well.
    delete from private.engagement_event_failures f
    where f.user_id = target
       or pg_catalog.strpos(pg_catalog.lower(f.event), target::text) > 0;
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
       or pg_catalog.strpos(pg_catalog.lower(f.event), old.id::text) > 0;
    return old;
end
$$;

drop function if exists private.engagement_failure_names_user(text, uuid);
drop function if exists private.engagement_uuid_of_any_spelling(text);
