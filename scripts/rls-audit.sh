#!/usr/bin/env bash
# Sets everything up, runs the RLS tests (pgTAP attempts and the concurrent-session run) on a
# throwaway database, and writes the audit record to docs/rls-audit.md.
# Options go to `python -m localdb.rls_audit` (--users N, --seconds S, --output FILE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh
exec .venv/bin/python -m localdb.rls_audit "$@"
