-- =============================================================================================
-- Migration: 20250101000000_realtime_broadcast_revisions
-- Purpose:   a revised or deleted event reaches its owner on the private broadcast channel
--            `engagement:<user id>` as an UPDATE, as it reaches their postgres_changes
--            subscription. A trigger after UPDATE of public.engagement_events hands the row to
--            realtime.broadcast_changes (Supabase Realtime's function for broadcasting database
--            changes), whose messages are private: Realtime delivers them only to clients that
--            the realtime.messages policies of 20241210 let join that topic, the row's owner.
--            Inserts are not broadcast: an import of 10,000 events would add 10,000 messages.
-- Objects:   private.engagement_events_broadcast_update() (trigger function, SECURITY DEFINER
--            so that the API roles need no privilege on realtime's functions), trigger
--            engagement_events_broadcast_update.
-- Guarded:   where realtime.broadcast_changes does not exist (a plain PostgreSQL, a project
--            without Realtime's database functions) neither the function nor the trigger is
--            created (so `supabase db lint` finds no function calling a missing one), with a
--            notice; running the migration again once it exists creates both.
-- Applies:   as the non-superuser `postgres` role (`supabase db push`); safe to run twice.
-- Rollback:  supabase/rollback/20250101000000_realtime_broadcast_revisions.down.sql
-- =============================================================================================

do $migration$
begin
    if to_regprocedure(
           'realtime.broadcast_changes(text, text, text, text, text, record, record, text)') is null
    then
        raise notice 'realtime.broadcast_changes does not exist: revised and deleted events are '
            'not broadcast on engagement:<user id> (run this migration again once it exists)';
        return;
    end if;

    create or replace function private.engagement_events_broadcast_update()
    returns trigger
    language plpgsql
    security definer
    set search_path = ''
    as $function$
    begin
        perform realtime.broadcast_changes(
            'engagement:' || new.user_id::text, 'UPDATE', 'UPDATE',
            tg_table_name, tg_table_schema, new, old);
        return null;
    end
    $function$;

    comment on function private.engagement_events_broadcast_update() is
        'Trigger: broadcasts a revised or deleted engagement event to its owner''s private '
        'channel engagement:<user id> (realtime.broadcast_changes).';
    revoke execute on function private.engagement_events_broadcast_update()
        from public, anon, authenticated, service_role;

    drop trigger if exists engagement_events_broadcast_update on public.engagement_events;
    create trigger engagement_events_broadcast_update
        after update on public.engagement_events
        for each row
        when (old.* is distinct from new.*)
        execute function private.engagement_events_broadcast_update();
end
$migration$;
