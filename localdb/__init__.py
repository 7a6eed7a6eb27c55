"""The project's own Supabase-shaped PostgreSQL for local runs and tests (no Docker)."""
