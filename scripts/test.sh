#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, type checks, and pytest (which
# starts its own throwaway PostgreSQL and runs the pgTAP files in supabase/tests/ too).
# Extra arguments go to pytest, e.g. scripts/test.sh -k rls
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

echo "==> ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "==> mypy"
.venv/bin/mypy
echo "==> pytest"
exec .venv/bin/python -m pytest "$@"
