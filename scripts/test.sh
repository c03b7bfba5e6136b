#!/usr/bin/env bash
# Runs every test of tinyfast, Rust and Python, with the linters. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

echo "== rust: fmt, clippy, tests"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

echo "== python: ruff, pytest"
"$venv/bin/ruff" check python tests benches
"$venv/bin/python" -m pytest "$@"

echo "== benchmarks: every micro-benchmark body once (benches/micro, no timing)"
"$venv/bin/python" -m pytest benches/micro --benchmark-disable -q -p no:cacheprovider
