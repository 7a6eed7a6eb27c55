#!/usr/bin/env bash
# Sets everything up, then runs benchmarks: scripts/bench.sh NAME [--quick] [options], where
# NAME is one of the benchmarks listed by `scripts/bench.sh --help`, or `all`.
# Each prints its figures and the machine, and writes bench/results/NAME.json (plots: docs/img/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/setup.sh
source scripts/setup.sh

exec .venv/bin/python -m bench "$@"
