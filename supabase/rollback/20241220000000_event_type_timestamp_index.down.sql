-- Down: 20241220000000_event_type_timestamp_index. Puts back the single-column event_type index
-- of 20241201 (filters on event_type keep working; "newest of a type" reads the whole table again).
drop index if exists public.idx_engagement_events_event_type;
create index if not exists idx_engagement_events_event_type
    on public.engagement_events (event_type);
