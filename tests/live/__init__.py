"""Live checks against a real Supabase project; see conftest.py and docs/live-checks.md."""
