#!/usr/bin/env bash
# Sets everything up, then runs the project locally: a throwaway Supabase-shaped PostgreSQL with
# the migrations and the seed applied. Ctrl-C stops it and removes its files.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
exec .venv/bin/python -m localdb "$@"
