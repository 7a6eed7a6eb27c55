#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite: lint, type checks, and pytest (which
# starts its own throwaway PostgreSQL and runs the pgTAP files in supabase/tests/ too).
# Extra arguments go to pytest, e.g. scripts/test.sh -k rls
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

step "ruff" \
  "fix what ruff names above ('.venv/bin/ruff format .' fixes formatting), then run scripts/test.sh again" \
  "lint and format check"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
step "mypy" "fix the type errors mypy lists above, then run scripts/test.sh again" \
  "strict type checks, about 10 s"
.venv/bin/mypy
say "pytest (starts its own PostgreSQL; the whole suite takes several minutes)"
exec .venv/bin/python -m pytest "$@"
