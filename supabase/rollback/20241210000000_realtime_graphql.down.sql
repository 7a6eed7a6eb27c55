-- Rollback of 20241210000000_realtime_graphql: removes the private engagement channel policies
-- and the GraphQL directive. The table stays in the supabase_realtime publication (20241201 put
-- it there) and keeps REPLICA IDENTITY DEFAULT, which is PostgreSQL's default anyway.
-- Run as `postgres`: psql "$DATABASE_URL" -f supabase/rollback/20241210000000_realtime_graphql.down.sql
-- Safe to run twice, and where the realtime schema does not exist.

do $$
begin
    if to_regclass('realtime.messages') is not null then
        drop policy if exists "Users receive own engagement channel" on realtime.messages;
        drop policy if exists "Engagement channels are per user" on realtime.messages;
        drop policy if exists "Only the backend sends on engagement channels" on realtime.messages;
    end if;
exception
    when insufficient_privilege then
        raise warning 'cannot drop policies on realtime.messages as %: %', current_user, sqlerrm;
end
$$;

comment on table public.engagement_events is
    'Engagement events of the BEE core module: one row per app open, completed goal, '
    'imported step count, ... Users read and soft-delete their own rows; service_role writes '
    'for anyone. Payloads are health data.';
