-- Down: 20250101000000_realtime_broadcast_revisions. Revised and deleted events are no longer
-- broadcast on engagement:<user id> (postgres_changes subscriptions still get them).
-- Run as `postgres`, in one transaction. Safe to run twice.

drop trigger if exists engagement_events_broadcast_update on public.engagement_events;
drop function if exists private.engagement_events_broadcast_update();
