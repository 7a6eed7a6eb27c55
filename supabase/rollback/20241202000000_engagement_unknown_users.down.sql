-- Down: 20241202000000_engagement_unknown_users. Drops public.engagement_unknown_user_ids.
-- No data is lost. The REST sink calls this function before every write, so a batch_import
-- deployed with --sink rest answers 502 (store_error 42883) until the migration is applied
-- again; the direct sink (DATABASE_URL) reads auth.users itself and keeps working.
-- Run as `postgres`:
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -1 -f supabase/rollback/20241202000000_engagement_unknown_users.down.sql
-- Safe to run twice.

drop function if exists public.engagement_unknown_user_ids(uuid[]);
