-- Down: 20241230000000_event_identity. Removes public.ingest_engagement_events,
-- public.ingest_staged_engagement_events and their private.ingest_engagement_batch, the
-- derived-id functions, the id key and engagement_events.revision.
--
-- What is lost:
--   * every row's revision (each row keeps the version it holds, and is_deleted);
--   * THE ID KEY. Applying the migration again generates a new key, so an event sent again
--     without event_id gets a new id and is stored a second time. To keep the ids, save the
--     key first (it is a secret: keep it in Secret Manager, never in a file or a ticket)
--       select encode(key, 'hex') from private.engagement_id_key;
--     and put it back right after the migration is applied again:
--       update private.engagement_id_key set key = decode('<saved hex>', 'hex');
-- batch_import writes through public.ingest_engagement_events: roll the functions back to a
-- release without it first, or every write fails (502).
-- Run as `postgres`, in one transaction. Safe to run twice.

drop function if exists public.ingest_engagement_events(jsonb, boolean, text, integer, integer, integer);
drop function if exists public.ingest_staged_engagement_events(boolean, text, integer, integer, integer);
drop function if exists private.ingest_engagement_batch(boolean, jsonb, boolean, text, integer, integer, integer);
drop function if exists private.engagement_batch_rows(boolean, jsonb);
drop function if exists private.engagement_event_id(text);
drop function if exists private.engagement_event_ids(text[]);
drop table if exists private.engagement_id_key;
alter table public.engagement_events drop constraint if exists engagement_events_revision_range;
alter table public.engagement_events drop column if exists revision;
comment on column public.engagement_events.id is
    'Event id; the ingestion functions use the caller''s event_id (or an id derived from the '
    'event''s content) so that a retried batch is stored once.';
