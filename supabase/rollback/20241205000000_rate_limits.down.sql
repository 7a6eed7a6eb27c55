-- Down: 20241205000000_rate_limits. batch_import then answers 502 store_error (42883) on
-- every request unless RATE_LIMIT_REQUESTS_PER_MINUTE=0 and RATE_LIMIT_EVENTS_PER_MINUTE=0
-- are deployed first.
drop function if exists public.take_engagement_rate_limit(text, integer, integer, integer);
drop table if exists private.rate_limit_windows;
