-- Cluster-wide preparation of a throwaway PostgreSQL the way a Supabase database is prepared:
-- the roles and their attributes. Runs once per cluster as the bootstrap superuser
-- (supabase_admin, as on Supabase), before any database is prepared.

-- API roles. PostgREST switches to one of them per request (SET LOCAL ROLE <role claim>).
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;

-- The role PostgREST logs in as: it holds no privileges itself and may only switch.
create role authenticator login noinherit;
grant anon, authenticated, service_role to authenticator;

-- GoTrue's owner role for the auth schema.
create role supabase_auth_admin login noinherit createrole;

-- On Supabase the `postgres` role is not a superuser: migrations run with these rights only.
create role postgres login createrole createdb replication bypassrls;
grant anon, authenticated, service_role to postgres;

-- Supabase puts `extensions` on the search path of its roles, so pgTAP and pgcrypto functions
-- resolve unqualified in tests and migrations.
alter role postgres set search_path = "$user", public, extensions;
alter role authenticator set search_path = "$user", public, extensions;
