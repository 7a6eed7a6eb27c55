-- =============================================================================================
-- Migration: 20241202000000_engagement_unknown_users
-- Purpose:   lets the ingestion functions find, before writing, which user ids of a batch are
--            not users of the project, so that such events are rejected one by one instead of
--            failing the whole batch on the foreign key of engagement_events.user_id. The REST
--            sink calls it through the Data API (POST /rest/v1/rpc/engagement_unknown_user_ids),
--            because service_role cannot read auth.users through PostgREST.
-- Depends:   auth.users (Supabase Auth); 20241201000000_engagement_events (same feature).
-- Security:  SECURITY DEFINER so that it can read auth.users on behalf of service_role; it
--            answers only "which of these ids do not exist", never anything about a user.
--            search_path is empty (every name is schema-qualified), and only service_role may
--            execute it: anon and authenticated could otherwise probe which user ids exist.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- =============================================================================================

create or replace function public.engagement_unknown_user_ids(ids uuid[])
returns setof uuid
language sql
stable
security definer
set search_path = ''
as $$
    select distinct requested.id
    from pg_catalog.unnest(ids) as requested(id)
    where requested.id is not null
      and not exists (select 1 from auth.users as u where u.id = requested.id)
$$;

comment on function public.engagement_unknown_user_ids(uuid[]) is
    'The ids among the given ones that are not users of the project (auth.users); used by the '
    'ingestion functions to reject events of unknown users one by one. service_role only.';

-- Functions are executable by PUBLIC by default, and Supabase's default privileges also grant
-- new functions in public to anon and authenticated: take all of that away, grant service_role.
revoke execute on function public.engagement_unknown_user_ids(uuid[])
    from public, anon, authenticated;
grant execute on function public.engagement_unknown_user_ids(uuid[]) to service_role;
