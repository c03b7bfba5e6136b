#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: makes sure a virtual environment holds the pinned
# dependencies (constraints.txt) and this checkout of tinyfast, and sets $venv to it.
#
# The environment is the checkout's own ./.venv (set TINYFAST_VENV to move it): two clones never
# share one editable install. Later runs do not download torch again; pip only installs what is
# missing or pinned differently.
set -euo pipefail

python=${PYTHON:-python3}
venv=${TINYFAST_VENV:-"$PWD/.venv"}

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv (the first run installs torch: several minutes, about 6 GB)"
  "$python" -m venv "$venv"
fi
echo "== installing pinned dependencies and building tinyfast._native"
"$venv/bin/pip" install --quiet --disable-pip-version-check -c constraints.txt maturin
"$venv/bin/pip" install --quiet --disable-pip-version-check --no-build-isolation \
  -c constraints.txt -e ".[train,dev]"
