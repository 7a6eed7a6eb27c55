#!/usr/bin/env bash
# Runs the live checks (tests/live) against a real Supabase project and writes a Markdown
# report that can be attached to the RLS audit. Use a staging project, never production: the
# run creates two test users through the Auth admin API, writes events, and deletes both users.
#
# Needs (environment):
#   SUPABASE_URL                 https://<ref>.supabase.co of the staging project
#   SUPABASE_SERVICE_ROLE_KEY    its service_role key (legacy JWT) or a secret key (sb_secret_...)
#   SUPABASE_ANON_KEY            its anon key (legacy JWT) or a publishable key (sb_publishable_...)
# Optional:
#   SUPABASE_JWT_SECRET          the legacy JWT secret; needed to verify a legacy service key
#   LIVE_REPORT                  where the report goes (default: live-report.md here)
#   LIVE_EMAIL_DOMAIN            domain of the test users' addresses (default: example.com)
#   LIVE_REALTIME_INSERTS        inserts timed through Realtime (default: 50)
# Extra arguments go to pytest, e.g. scripts/live-check.sh -k realtime
# Details: docs/live-checks.md
set -euo pipefail

usage() {
  sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  usage
  exit 0
fi

missing=()
for name in SUPABASE_URL SUPABASE_SERVICE_ROLE_KEY SUPABASE_ANON_KEY; do
  if [ -z "${!name:-}" ]; then
    missing+=("$name")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  {
    echo "live-check: not run: ${missing[*]} not set."
    echo "Set SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY and SUPABASE_ANON_KEY of a staging project"
    echo "(never production: the run creates and deletes test users). See docs/live-checks.md."
  } >&2
  exit 2
fi
case "$SUPABASE_URL" in
  https://* | http://localhost:* | http://127.0.0.1:*) ;;
  *)
    echo "live-check: SUPABASE_URL must be the project's https:// URL" \
      "(http only for a local stack on localhost)" >&2
    exit 2
    ;;
esac

# The report path is taken relative to where the command was run, before moving to the repo.
report="${LIVE_REPORT:-live-report.md}"
case "$report" in
  /*) ;;
  *) report="$PWD/$report" ;;
esac
export LIVE_REPORT="$report"
export LIVE_CHECKS=1 # the suite skips itself without this opt-in (tests/live/conftest.py)
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# shellcheck source=scripts/setup.sh
source scripts/setup.sh

host="${SUPABASE_URL#*://}"
host="${host%%/*}"
rm -f "$report" # a report left from an earlier run must not pass for this one's
echo "==> live checks against $host (report: $report)"
status=0
.venv/bin/python -m pytest tests/live -rs --tb=short -p no:cacheprovider "$@" || status=$?
if [ -f "$report" ]; then
  echo "==> report: $report"
else
  echo "==> no report was written (nothing ran; see the output above)" >&2
fi
exit "$status"
