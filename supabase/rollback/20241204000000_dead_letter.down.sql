-- Down: 20241204000000_dead_letter. Drops the dead-letter store and what writes to it.
-- Stored failures are deleted with it: export them first if they are still needed
-- (docs/deployment.md, "Rollback"). Apply after 20241205/20241206 are rolled back.
drop function if exists public.record_engagement_failures(jsonb);
drop table if exists private.engagement_event_failures;
