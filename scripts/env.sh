#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: makes sure a virtual environment with the pinned
# dependencies (constraints.txt) and tinyfast itself exists, and sets $venv to it.
#
# The environment is cached under ~/.cache/tinyfast (keyed by the dependency files), so later
# runs do not reinstall torch. Set TINYFAST_VENV to use another location.
set -euo pipefail

key=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)
venv=${TINYFAST_VENV:-"$HOME/.cache/tinyfast/venv-$key"}
python=${PYTHON:-python3}

if [ ! -f "$venv/.complete" ]; then
  echo "== creating $venv (first run: installs torch, about 6 GB)"
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip
  "$venv/bin/pip" install --quiet -c constraints.txt maturin
  "$venv/bin/pip" install --quiet -c constraints.txt -e ".[train,dev]"
  touch "$venv/.complete"
fi

# The extension is rebuilt from this checkout every time (the venv may serve several checkouts).
echo "== building tinyfast._native"
"$venv/bin/pip" install --quiet --no-deps --no-build-isolation -e .
