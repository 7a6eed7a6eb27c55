"""Engagement events ingestion for Supabase, packaged as Google Cloud Functions."""
