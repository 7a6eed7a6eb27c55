-- Down: 20241203000000_service_jwt_helpers. Drops the SQL JWT helpers, the table that holds
-- their secret and the record of extension availability, then schema `private` itself when
-- nothing else is left in it (it may hold objects of later migrations or of other features:
-- then it stays, with a notice).
--
-- The stored JWT secret is deleted: after applying the migration again, set it again with
--   select private.set_service_jwt_secret('<the project''s JWT secret>');
-- SQL jobs that mint tokens with private.sign_service_jwt() fail until then. pgcrypto stays
-- installed (every Supabase project has it, and other code may use it).
-- Run as `postgres`:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -1 -f supabase/rollback/20241203000000_service_jwt_helpers.down.sql
-- Safe to run twice.

drop function if exists private.verify_service_jwt(text, integer);
drop function if exists private.sign_service_jwt(integer, jsonb);
drop function if exists private.set_service_jwt_secret(text);
drop function if exists private.base64url_decode(text);
drop function if exists private.base64url_encode(bytea);
drop table if exists private.service_jwt_secret;
drop table if exists private.extension_availability;

do $schema$
begin
    drop schema if exists private;  -- no CASCADE: only an empty schema goes
exception
    when dependent_objects_still_exist then
        raise notice 'schema private still holds other objects; it is kept';
    when insufficient_privilege then
        raise notice 'schema private belongs to another role; it is kept';
end
$schema$;
