#!/usr/bin/env bash
# Sets up everything the project needs on a Debian or Ubuntu machine, idempotently:
#   - Debian packages: PostgreSQL server binaries (15 preferred), pgTAP, wal2json, python3-venv,
#     and gcc with the Python headers (python3-dev) for the compiled quick route of validation;
#   - a virtual environment in .venv with requirements-test.txt (which includes requirements.txt,
#     and through it the accelerator/ package, compiled on the way).
# Safe to run any number of times: it installs only what is missing or changed.
# Sourced by scripts/dev.sh and scripts/test.sh; can also be run on its own.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '==> %s\n' "$*"; }

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

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# PostgreSQL: the major version Supabase runs (15) where the distribution has it; otherwise the
# first of 16 or 17 that it has (Ubuntu 24.04 ships 16). PG_MAJOR overrides.
pick_major() {
  if [ -n "${PG_MAJOR:-}" ]; then echo "$PG_MAJOR"; return; fi
  for major in 15 16 17; do
    if [ -x "/usr/lib/postgresql/$major/bin/postgres" ]; then echo "$major"; return; fi
  done
  if [ "$apt_updated" -eq 0 ]; then as_root apt-get update -qq; apt_updated=1; fi
  for major in 15 16 17; do
    if apt-cache show "postgresql-$major" >/dev/null 2>&1; then echo "$major"; return; fi
  done
  echo "error: no postgresql-15, -16 or -17 package is available to apt" >&2
  return 1
}

major=$(pick_major)
missing=()
[ -x "/usr/lib/postgresql/$major/bin/postgres" ] || missing+=("postgresql-$major")
[ -f "/usr/share/postgresql/$major/extension/pgtap.control" ] || missing+=("postgresql-$major-pgtap")
[ -f "/usr/lib/postgresql/$major/lib/wal2json.so" ] || missing+=("postgresql-$major-wal2json")
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=("python3-venv")
# accelerator/ is C: without a compiler and Python.h it would install without its extension.
command -v gcc >/dev/null 2>&1 || missing+=("gcc")
python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
  missing+=("python3-dev")
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
fi
export PG_BINDIR="/usr/lib/postgresql/$major/bin"

# Python: one virtual environment, reinstalled only when the requirement files change.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: Python 3.11 or newer is needed; python3 is $(python3 --version 2>&1)" >&2
  exit 1
}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing Python packages into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
  echo "$want" >"$stamp"
fi
say "setup complete (PostgreSQL $major, $(.venv/bin/python --version))"
