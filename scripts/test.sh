#!/usr/bin/env bash
# The whole test suite: installs what it needs (the tansu broker, cached), then runs every test.
# Each integration test starts its own tansu broker on a free loopback port and stops it after.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test fulfilment).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
export TANSU_BIN

if [ "${CI:-}" = "true" ]; then
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
fi
cargo test --all-targets --locked "$@"
