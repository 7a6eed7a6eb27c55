#!/usr/bin/env bash
# Sets up everything the project needs on a Debian or Ubuntu machine, idempotently:
#   - Debian packages: the PostgreSQL server binaries (15 preferred, else 16 or 17), pgTAP,
#     wal2json, python3-venv, and curl (for the commands scripts/dev.sh prints);
#   - a virtual environment in .venv with requirements-test.txt (which includes requirements.txt),
#     and one in .venv-fuzz with requirements-fuzz.txt (schemathesis, for the fuzz tests).
# The project runs its own throwaway PostgreSQL clusters, so Debian's own is not wanted: before
# the server package is installed, /etc/postgresql-common/createcluster.conf gets
# `create_main_cluster = false` (only when it has no such setting), and the `postgresql`
# service that the first install of postgresql-common enables is disabled and stopped.
# Safe to run any number of times: it installs only what is missing or changed, so a second run
# changes nothing. Sourced by scripts/dev.sh and scripts/test.sh; can also be run on its own.
set -Eeuo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }

# Every step names itself; when a command fails, the ERR trap says which step and command it
# was and what to do next (set -E carries the trap into functions, and into dev.sh and test.sh,
# which source this file).
current_step="setup"
current_hint="run scripts/setup.sh again after fixing the cause above"
failed_command=""
step() { # step WHAT WHAT-TO-DO-IF-IT-FAILS [HOW-LONG]
  current_step=$1
  current_hint=$2
  say "$1${3:+ ($3)}"
}
on_error() {
  local status=$?
  {
    printf 'error: %s failed (exit status %d): %s\n' "$current_step" "$status" \
      "${failed_command:-$BASH_COMMAND}"
    printf '  what to do: %s\n' "$current_hint"
  } >&2
}
trap on_error ERR

# Runs a command with its output in a log that is shown (its last 25 lines) only if it fails:
# apt and pip are chatty when they succeed.
quietly() {
  local log status=0
  log=$(mktemp "${TMPDIR:-/tmp}/engagement-setup.XXXXXX")
  "$@" >"$log" 2>&1 || status=$?
  if [ "$status" -ne 0 ]; then
    failed_command="$*"
    failed_command=${failed_command#as_root }
    failed_command=${failed_command/#apt_get /apt-get }
    printf 'the last lines of its output:\n' >&2
    tail -n 25 "$log" | sed 's/^/  | /' >&2
  fi
  rm -f "$log"
  return "$status"
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "error: '$*' needs root and sudo is not available" >&2
    return 1
  fi
}

apt_get() { as_root env DEBIAN_FRONTEND=noninteractive apt-get -qq "$@"; }

apt_updated=0
apt_update_once() {
  [ "$apt_updated" -eq 0 ] || return 0
  step "apt-get update" \
    "check the network and the apt sources (/etc/apt/sources.list.d), then run scripts/setup.sh again" \
    "refreshing the package lists"
  quietly apt_get update
  apt_updated=1
}

apt_install() {
  apt_update_once
  step "installing Debian packages: $*" \
    "see apt-get's lines above; 'sudo apt-get install $*' shows all of it; then run scripts/setup.sh again" \
    "apt-get, about half a minute"
  quietly apt_get install -y --no-install-recommends "$@"
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'; }

# PostgreSQL: the major version Supabase's older projects run (15) where the distribution has
# it; otherwise the first of 16 or 17 that it has (Ubuntu 24.04 ships 16, Debian 13 ships 17).
# PG_MAJOR overrides.
major=${PG_MAJOR:-}
if [ -z "$major" ]; then
  for candidate in 15 16 17; do
    if [ -x "/usr/lib/postgresql/$candidate/bin/postgres" ]; then
      major=$candidate
      break
    fi
  done
fi
if [ -z "$major" ]; then
  apt_update_once
  for candidate in 15 16 17; do
    if apt-cache show "postgresql-$candidate" >/dev/null 2>&1; then
      major=$candidate
      break
    fi
  done
  if [ -z "$major" ]; then
    current_step="choosing a PostgreSQL version"
    current_hint="add a package source that has postgresql-15, -16 or -17 (for example apt.postgresql.org), or set PG_MAJOR"
    false
  fi
fi

missing=()
[ -x "/usr/lib/postgresql/$major/bin/postgres" ] || missing+=("postgresql-$major")
[ -f "/usr/share/postgresql/$major/extension/pgtap.control" ] || missing+=("postgresql-$major-pgtap")
[ -f "/usr/lib/postgresql/$major/lib/wal2json.so" ] || missing+=("postgresql-$major-wal2json")
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python3-venv")
command -v curl >/dev/null 2>&1 || missing+=("curl")

if [ "${#missing[@]}" -gt 0 ]; then
  new_common=0
  if [[ " ${missing[*]} " == *" postgresql-$major "* ]]; then
    # createcluster.conf is written by postgresql-common's own installation (and kept by it on
    # upgrades), so it is installed first and the one setting added before any server package.
    if ! installed postgresql-common; then
      new_common=1
      apt_install postgresql-common
    fi
    conf=/etc/postgresql-common/createcluster.conf
    if ! grep -Eq '^[[:space:]]*create_main_cluster[[:space:]]*=' "$conf" 2>/dev/null; then
      step "setting create_main_cluster = false in $conf (no Debian cluster on port 5432)" \
        "add the line 'create_main_cluster = false' to $conf yourself, then run scripts/setup.sh again"
      printf '%s\n' "" "# No cluster for new server packages: scripts/setup.sh of engagement-events" \
        "# starts throwaway clusters of its own." "create_main_cluster = false" |
        as_root tee -a "$conf" >/dev/null
    fi
  fi
  apt_install "${missing[@]}"
  if [ "$new_common" -eq 1 ]; then
    # The first install of postgresql-common enables the `postgresql` service (and starts it
    # where systemd runs); with no cluster it serves nothing, so it is disabled again.
    step "disabling the postgresql service that postgresql-common enabled" \
      "'sudo systemctl disable --now postgresql' does the same; then run scripts/setup.sh again"
    if [ -d /run/systemd/system ]; then
      quietly as_root systemctl disable --now postgresql.service
    else
      # No systemd running (a container or a chroot): the boot links go, so that nothing
      # starts it at a later boot either; package upgrades keep a unit its admin disabled.
      if command -v systemctl >/dev/null 2>&1; then
        quietly as_root systemctl disable postgresql.service
      else
        as_root rm -f /etc/systemd/system/multi-user.target.wants/postgresql.service
      fi
      if [ -x /etc/init.d/postgresql ] && command -v update-rc.d >/dev/null 2>&1; then
        quietly as_root update-rc.d postgresql disable
      fi
    fi
  fi
fi
export PG_BINDIR="/usr/lib/postgresql/$major/bin"

# Python: one virtual environment, reinstalled only when a requirement file changes.
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "error: Python 3.11 or newer is needed; python3 is $(python3 --version 2>&1)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  step "creating .venv" "remove .venv if it is half made, then run scripts/setup.sh again"
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  step "installing Python packages into .venv" \
    "see pip's lines above (network, package index, a pin that does not install on $(python3 --version 2>&1)); then run scripts/setup.sh again" \
    "pip: about half a minute, minutes on a slow link"
  quietly .venv/bin/python -m pip install --disable-pip-version-check --upgrade pip
  quietly .venv/bin/python -m pip install --disable-pip-version-check -r requirements-test.txt
  echo "$want" >"$stamp"
fi
# The fuzzing tool, schemathesis, in an environment of its own (requirements-fuzz.txt), so that
# its pins never hold back the functions' own: tests/test_fuzz_http.py runs its CLI from there.
if [ ! -x .venv-fuzz/bin/python ]; then
  step "creating .venv-fuzz" "remove .venv-fuzz if it is half made, then run scripts/setup.sh again"
  python3 -m venv .venv-fuzz
fi
fuzz_stamp=.venv-fuzz/.requirements.sha256
fuzz_want=$(sha256sum <requirements-fuzz.txt | cut -d' ' -f1)
if [ ! -f "$fuzz_stamp" ] || [ "$(cat "$fuzz_stamp")" != "$fuzz_want" ]; then
  step "installing schemathesis into .venv-fuzz" \
    "see pip's lines above (network, package index, a pin that does not install on $(python3 --version 2>&1)); then run scripts/setup.sh again" \
    "pip: about half a minute"
  quietly .venv-fuzz/bin/python -m pip install --disable-pip-version-check --upgrade pip
  quietly .venv-fuzz/bin/python -m pip install --disable-pip-version-check -r requirements-fuzz.txt
  echo "$fuzz_want" >"$fuzz_stamp"
fi
say "setup complete (PostgreSQL $major, $(.venv/bin/python --version))"
