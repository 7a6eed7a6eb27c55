-- =============================================================================================
-- Migration: 20241203000000_service_jwt_helpers
-- Purpose:   sign and verify HS256 service-role JWTs inside the database, so that SQL jobs
--            (pg_cron, pg_net callers, database functions) can mint a token for the ingestion
--            Cloud Functions and check one they receive, by the same rules as
--            functions/service_auth.py: HS256 only (`alg: none`, HS384/HS512 and every other
--            algorithm refused), 30 s leeway on exp/nbf/iat, only role = service_role passes.
-- Objects:   schema `private` (not exposed by the Data API), with
--              private.extension_availability   pgjwt/pgcrypto state recorded at migration time
--              private.service_jwt_secret       the HS256 secret (one row; nobody but the owner)
--              private.set_service_jwt_secret(secret text)                        owner only
--              private.sign_service_jwt(ttl_seconds integer, extra_claims jsonb)  service_role
--              private.verify_service_jwt(token text, leeway_seconds integer)    service_role
--              private.base64url_encode(bytea), private.base64url_decode(text)  service_role
-- Depends:   pgcrypto in schema `extensions` (present on every Supabase project) for
--            extensions.hmac(). pgjwt is optional and never used: it is deprecated on
--            Supabase's PostgreSQL 17 and may be absent, so base64url and the signature are
--            done here in SQL, and the helpers behave the same with or without it. Whether
--            pgjwt was available and installed when this migration ran is recorded in
--            private.extension_availability (for code that still calls extensions.sign()).
-- Secret:    set it once per project, as `postgres` (SQL editor or psql), with the project's
--            JWT secret (Dashboard > Project Settings > JWT Keys > Legacy JWT secret):
--                select private.set_service_jwt_secret('<the project''s JWT secret>');
--            Secrets shorter than 32 characters are refused. Running the setter again rotates
--            the secret; tokens signed with the old one stop verifying at once.
-- Use:       as service_role (or the owner):
--                select private.sign_service_jwt();                   -- valid for 3600 s
--                select private.sign_service_jwt(300, '{"sub": "nightly-import"}');
--                select private.verify_service_jwt(<token>);          -- the claims, or an error
--            Errors: SQLSTATE 28000 for a token that does not verify, 42501 for a genuine
--            token whose role is not service_role, 22023 for bad arguments, 55000 when no
--            secret is set. The DETAIL of 28000/42501 is the error code service_auth.py uses:
--            malformed, unsupported_algorithm, bad_signature, expired, not_yet_valid,
--            issued_in_future, not_service_role. Messages never contain the token or secret.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); every statement is
--            safe to run twice (if not exists, create or replace, upsert), and running it
--            again keeps the secret.
-- =============================================================================================

-- pgcrypto is a trusted extension, so `postgres` may create it; it already exists on Supabase.
create extension if not exists pgcrypto with schema extensions;

do $guard$
begin
    if not exists (
        select 1
        from pg_catalog.pg_extension e
        join pg_catalog.pg_namespace n on n.oid = e.extnamespace
        where e.extname = 'pgcrypto' and n.nspname = 'extensions'
    ) then
        raise exception 'pgcrypto is installed outside schema extensions; the JWT helpers call extensions.hmac()'
            using errcode = '55000',
                  hint = 'move it with: alter extension pgcrypto set schema extensions';
    end if;
end
$guard$;

-- ---------------------------------------------------------------------------------------------
-- Schema: not in the Data API's exposed schemas (supabase/config.toml), no usage for the
-- client roles; service_role may use it to call the helpers.
-- ---------------------------------------------------------------------------------------------
create schema if not exists private;
revoke all on schema private from public;
revoke all on schema private from anon, authenticated;
grant usage on schema private to service_role;
comment on schema private is
    'Objects the Data API does not expose: JWT helpers and their secret. Not for anon or authenticated.';

-- ---------------------------------------------------------------------------------------------
-- Which optional extensions were there when this migration ran.
-- ---------------------------------------------------------------------------------------------
create table if not exists private.extension_availability (
    extension name not null,
    available boolean not null,
    installed boolean not null,
    default_version text,
    installed_version text,
    recorded_at timestamptz not null default now(),
    constraint extension_availability_pkey primary key (extension)
);
alter table private.extension_availability enable row level security;
revoke all on table private.extension_availability from public, anon, authenticated, service_role;
grant select on table private.extension_availability to service_role;
comment on table private.extension_availability is
    'State of pgjwt (optional, deprecated on PostgreSQL 17) and pgcrypto (required) when '
    '20241203000000_service_jwt_helpers last ran. The JWT helpers never use pgjwt.';

insert into private.extension_availability
    (extension, available, installed, default_version, installed_version, recorded_at)
select x.name,
       a.name is not null,
       e.extname is not null,
       a.default_version,
       e.extversion,
       now()
from (values ('pgjwt'::name), ('pgcrypto'::name)) as x (name)
left join pg_catalog.pg_available_extensions a on a.name = x.name
left join pg_catalog.pg_extension e on e.extname = x.name
on conflict (extension) do update
    set available = excluded.available,
        installed = excluded.installed,
        default_version = excluded.default_version,
        installed_version = excluded.installed_version,
        recorded_at = excluded.recorded_at;

-- ---------------------------------------------------------------------------------------------
-- The secret: one row, readable only by the owner (`postgres`). RLS is enabled with no policy
-- and no role but the owner has any privilege; the SECURITY DEFINER helpers read it as owner.
-- ---------------------------------------------------------------------------------------------
create table if not exists private.service_jwt_secret (
    id boolean not null default true,
    secret text not null,
    updated_at timestamptz not null default now(),
    constraint service_jwt_secret_pkey primary key (id),
    constraint service_jwt_secret_single_row check (id),
    constraint service_jwt_secret_min_length check (char_length(secret) >= 32)
);
alter table private.service_jwt_secret enable row level security;
revoke all on table private.service_jwt_secret from public, anon, authenticated, service_role;
comment on table private.service_jwt_secret is
    'The HS256 secret of the service JWT helpers (the project''s JWT secret). One row; set it '
    'with private.set_service_jwt_secret(). No API role may read it.';

-- ---------------------------------------------------------------------------------------------
-- base64url (RFC 7515: URL alphabet, no padding).
-- ---------------------------------------------------------------------------------------------
create or replace function private.base64url_encode(data bytea)
returns text
language sql
immutable
strict
set search_path = ''
as $$
    select pg_catalog.translate(pg_catalog.encode(data, 'base64'), E'+/=\n', '-_')
$$;

-- Raises 22P02 for anything that is not unpadded base64url.
create or replace function private.base64url_decode(data text)
returns bytea
language plpgsql
immutable
strict
set search_path = ''
as $$
begin
    if data !~ '^[A-Za-z0-9_-]*$' or pg_catalog.char_length(data) % 4 = 1 then
        raise exception 'not base64url text' using errcode = '22P02';
    end if;
    return pg_catalog.decode(
        pg_catalog.translate(data, '-_', '+/')
            || pg_catalog.repeat('=', (4 - pg_catalog.char_length(data) % 4) % 4),
        'base64'
    );
end
$$;

comment on function private.base64url_encode(bytea) is 'base64url without padding (RFC 7515).';
comment on function private.base64url_decode(text) is
    'Inverse of private.base64url_encode; raises 22P02 for text that is not unpadded base64url.';

-- ---------------------------------------------------------------------------------------------
-- Setter: owner only (not service_role). Runs with the caller's rights, so only a role that may
-- write the table (its owner) gets anywhere even if EXECUTE were granted by mistake.
-- ---------------------------------------------------------------------------------------------
create or replace function private.set_service_jwt_secret(secret text)
returns void
language plpgsql
volatile
security invoker
set search_path = ''
as $$
begin
    if secret is null or pg_catalog.char_length(secret) < 32 then
        raise exception 'the JWT secret must be at least 32 characters long'
            using errcode = '22023',
                  hint = 'use the project''s JWT secret from the dashboard (Project Settings > JWT Keys)';
    end if;
    insert into private.service_jwt_secret as s (id, secret, updated_at)
    values (true, set_service_jwt_secret.secret, pg_catalog.now())
    on conflict (id) do update set secret = excluded.secret, updated_at = excluded.updated_at;
end
$$;

comment on function private.set_service_jwt_secret(text) is
    'Sets or rotates the HS256 secret of the service JWT helpers (at least 32 characters). '
    'Owner (postgres) only.';

-- ---------------------------------------------------------------------------------------------
-- Sign.
-- ---------------------------------------------------------------------------------------------
create or replace function private.sign_service_jwt(
    ttl_seconds integer default 3600,
    extra_claims jsonb default '{}'::jsonb
)
returns text
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_secret text;
    v_now bigint;
    v_claims jsonb;
    v_signing_input text;
begin
    if ttl_seconds is null or ttl_seconds < 1 then
        raise exception 'ttl_seconds must be a positive number of seconds' using errcode = '22023';
    end if;
    if extra_claims is null then
        extra_claims := '{}'::jsonb;
    end if;
    if pg_catalog.jsonb_typeof(extra_claims) <> 'object' then
        raise exception 'extra_claims must be a JSON object' using errcode = '22023';
    end if;
    if extra_claims ?| array['role', 'iss', 'iat', 'exp'] then
        raise exception 'extra_claims must not set role, iss, iat or exp; the signer sets them'
            using errcode = '22023';
    end if;

    select s.secret into v_secret from private.service_jwt_secret s where s.id;
    if v_secret is null then
        raise exception 'no service JWT secret is set'
            using errcode = '55000',
                  hint = 'as postgres: select private.set_service_jwt_secret(''<the project''''s JWT secret>'')';
    end if;

    v_now := pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp()))::bigint;
    v_claims := extra_claims || pg_catalog.jsonb_build_object(
        'role', 'service_role',
        'iss', 'supabase',
        'iat', v_now,
        'exp', v_now + ttl_seconds
    );
    v_signing_input :=
        private.base64url_encode(pg_catalog.convert_to('{"alg":"HS256","typ":"JWT"}', 'UTF8'))
        || '.'
        || private.base64url_encode(pg_catalog.convert_to(v_claims::text, 'UTF8'));
    return v_signing_input || '.' || private.base64url_encode(
        extensions.hmac(
            pg_catalog.convert_to(v_signing_input, 'UTF8'),
            pg_catalog.convert_to(v_secret, 'UTF8'),
            'sha256'
        )
    );
end
$$;

comment on function private.sign_service_jwt(integer, jsonb) is
    'An HS256 JWT with role service_role, iss supabase, iat now and exp now + ttl_seconds, plus '
    'extra_claims (which must not set role, iss, iat or exp), signed with the stored secret.';

-- ---------------------------------------------------------------------------------------------
-- Verify. Order: shape, header, algorithm, signature, then (only for a genuine token) payload,
-- time claims, role. The signature comparison XORs every byte of the two 32-byte MACs and looks
-- at the result once, so it does not stop at the first differing byte (PL/pgSQL is no
-- constant-time environment, but the work done no longer depends on where the MACs differ).
-- ---------------------------------------------------------------------------------------------
create or replace function private.verify_service_jwt(token text, leeway_seconds integer default 30)
returns jsonb
language plpgsql
volatile
security definer
set search_path = ''
as $$
declare
    v_parts text[];
    v_header jsonb;
    v_payload jsonb;
    v_alg text;
    v_secret text;
    v_given bytea;
    v_expected bytea;
    v_diff integer;
    v_now numeric;
    v_claim text;
    v_time numeric;
    v_role jsonb;
begin
    if leeway_seconds is null or leeway_seconds < 0 then
        raise exception 'leeway_seconds must not be negative' using errcode = '22023';
    end if;
    if token is null or token = '' then
        raise exception 'no token was given' using errcode = '28000', detail = 'malformed';
    end if;
    if pg_catalog.char_length(token) > 16384 then
        raise exception 'the token is longer than 16384 characters'
            using errcode = '28000', detail = 'malformed';
    end if;
    v_parts := pg_catalog.string_to_array(token, '.');
    if pg_catalog.cardinality(v_parts) <> 3 then
        raise exception 'the token is not a JWT: expected three base64url parts separated by dots'
            using errcode = '28000', detail = 'malformed';
    end if;

    begin
        v_header := pg_catalog.convert_from(private.base64url_decode(v_parts[1]), 'UTF8')::jsonb;
    exception when data_exception then
        raise exception 'the JWT header is not base64url-encoded JSON'
            using errcode = '28000', detail = 'malformed';
    end;
    if pg_catalog.jsonb_typeof(v_header) is distinct from 'object'
        or pg_catalog.jsonb_typeof(v_header -> 'alg') is distinct from 'string' then
        raise exception 'the JWT header is not a JSON object with an "alg" string'
            using errcode = '28000', detail = 'malformed';
    end if;
    v_alg := v_header ->> 'alg';
    if v_alg <> 'HS256' then
        raise exception 'the JWT algorithm % is not accepted; only HS256 is',
            case when v_alg ~ '^[A-Za-z0-9]{1,16}$' then pg_catalog.quote_literal(v_alg)
                 else '(not shown)' end
            using errcode = '28000', detail = 'unsupported_algorithm';
    end if;

    begin
        v_given := private.base64url_decode(v_parts[3]);
    exception when data_exception then
        raise exception 'the JWT signature is not base64url'
            using errcode = '28000', detail = 'malformed';
    end;

    select s.secret into v_secret from private.service_jwt_secret s where s.id;
    if v_secret is null then
        raise exception 'no service JWT secret is set'
            using errcode = '55000',
                  hint = 'as postgres: select private.set_service_jwt_secret(''<the project''''s JWT secret>'')';
    end if;
    v_expected := extensions.hmac(
        pg_catalog.convert_to(v_parts[1] || '.' || v_parts[2], 'UTF8'),
        pg_catalog.convert_to(v_secret, 'UTF8'),
        'sha256'
    );
    -- The length of an HS256 MAC is public (32 bytes); only its content is compared blind.
    v_diff := 0;
    if pg_catalog.length(v_given) = 32 then
        for i in 0..31 loop
            v_diff := v_diff | (pg_catalog.get_byte(v_given, i) # pg_catalog.get_byte(v_expected, i));
        end loop;
    else
        v_diff := 1;
    end if;
    if v_diff <> 0 then
        raise exception 'the JWT signature does not verify'
            using errcode = '28000', detail = 'bad_signature';
    end if;

    begin
        v_payload := pg_catalog.convert_from(private.base64url_decode(v_parts[2]), 'UTF8')::jsonb;
    exception when data_exception then
        raise exception 'the JWT payload is not base64url-encoded JSON'
            using errcode = '28000', detail = 'malformed';
    end;
    if pg_catalog.jsonb_typeof(v_payload) is distinct from 'object' then
        raise exception 'the JWT payload is not a JSON object'
            using errcode = '28000', detail = 'malformed';
    end if;
    foreach v_claim in array array['exp', 'nbf', 'iat'] loop
        if v_payload ? v_claim and pg_catalog.jsonb_typeof(v_payload -> v_claim) <> 'number' then
            raise exception 'the JWT claim "%" is not a number of seconds', v_claim
                using errcode = '28000', detail = 'malformed';
        end if;
    end loop;

    v_now := pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())::numeric;
    v_time := (v_payload ->> 'exp')::numeric;
    if v_time is not null and v_now >= v_time + leeway_seconds then
        raise exception 'the JWT has expired (exp % s after the epoch; leeway % s)',
            v_time, leeway_seconds
            using errcode = '28000', detail = 'expired';
    end if;
    v_time := (v_payload ->> 'nbf')::numeric;
    if v_time is not null and v_now + leeway_seconds < v_time then
        raise exception 'the JWT is not valid yet (nbf; leeway % s)', leeway_seconds
            using errcode = '28000', detail = 'not_yet_valid';
    end if;
    v_time := (v_payload ->> 'iat')::numeric;
    if v_time is not null and v_time > v_now + leeway_seconds then
        raise exception 'the JWT claims to be issued in the future (iat; leeway % s)', leeway_seconds
            using errcode = '28000', detail = 'issued_in_future';
    end if;

    v_role := v_payload -> 'role';
    if v_role is null or v_role = 'null'::jsonb then
        raise exception 'the JWT has no role claim; only service_role is accepted'
            using errcode = '42501', detail = 'not_service_role';
    end if;
    if pg_catalog.jsonb_typeof(v_role) <> 'string' then
        raise exception 'the JWT claim "role" is not a string'
            using errcode = '28000', detail = 'malformed';
    end if;
    if v_role #>> '{}' <> 'service_role' then
        raise exception 'the JWT role is not service_role; only service_role is accepted'
            using errcode = '42501', detail = 'not_service_role';
    end if;
    return v_payload;
end
$$;

comment on function private.verify_service_jwt(text, integer) is
    'The claims of an HS256 service_role JWT signed with the stored secret; raises 28000 '
    '(DETAIL: malformed, unsupported_algorithm, bad_signature, expired, not_yet_valid, '
    'issued_in_future) or 42501 (DETAIL: not_service_role) otherwise.';

-- ---------------------------------------------------------------------------------------------
-- Who may execute what. New functions are executable by PUBLIC by default, and Supabase's
-- default privileges may add anon and authenticated: revoke both ways, then grant.
-- ---------------------------------------------------------------------------------------------
revoke all on function private.base64url_encode(bytea) from public, anon, authenticated;
revoke all on function private.base64url_decode(text) from public, anon, authenticated;
revoke all on function private.sign_service_jwt(integer, jsonb) from public, anon, authenticated;
revoke all on function private.verify_service_jwt(text, integer) from public, anon, authenticated;
revoke all on function private.set_service_jwt_secret(text)
    from public, anon, authenticated, service_role;

grant execute on function private.base64url_encode(bytea) to service_role;
grant execute on function private.base64url_decode(text) to service_role;
grant execute on function private.sign_service_jwt(integer, jsonb) to service_role;
grant execute on function private.verify_service_jwt(text, integer) to service_role;
