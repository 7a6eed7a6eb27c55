-- Down: 20241201000000_engagement_events. Drops public.engagement_events with its indexes,
-- policies, grants and its place in the supabase_realtime publication.
--
-- EVERY STORED EVENT IS DELETED. Take a backup of the table first (docs/deployment.md, "Backup
-- and restore"); prefer a forward fix (a new migration) whenever the table holds real data.
-- Apply only after every later migration has been rolled back: the drop has no CASCADE, so it
-- fails, and changes nothing, while a later object (a view, a trigger, a function's table type)
-- still depends on the table.
--
-- Because it destroys data, it refuses to run unless the session confirms it:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -1 \
--     -c "set engagement.confirm_drop = 'engagement_events'" \
--     -f supabase/rollback/20241201000000_engagement_events.down.sql
-- Run as `postgres`, the table's owner. Safe to run twice.

do $confirm$
begin
    if pg_catalog.current_setting('engagement.confirm_drop', true) is distinct from 'engagement_events' then
        raise exception 'refusing to drop public.engagement_events and every event in it'
            using errcode = '55000',
                  hint = 'back the table up, then run: set engagement.confirm_drop = ''engagement_events'' in the same session';
    end if;
end
$confirm$;

drop table if exists public.engagement_events;
