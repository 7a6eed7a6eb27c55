-- Down: 20241221000000_value_index_with_user. Puts back the payload-only GIN index of 20241201.
-- btree_gin stays installed: other objects of the project may use it by now, and it is harmless.
drop index if exists public.idx_engagement_events_value;
create index if not exists idx_engagement_events_value
    on public.engagement_events using gin (value jsonb_path_ops);
