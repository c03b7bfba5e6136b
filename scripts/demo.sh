#!/usr/bin/env bash
# Runs `tinyfast demo` (the whole flow on a generated task) in the project's environment.
# Extra arguments go to `tinyfast demo` (see `--help`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
exec "$venv/bin/tinyfast" demo "$@"
