#!/usr/bin/env bash
# The whole test suite: installs what it needs (the tansu broker, cached), then runs every test.
# Each integration test starts its own tansu broker on a free loopback port and stops it after.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test fulfilment).
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
export TANSU_BIN

# Prometheus and promtool (Debian's package) for the scrape test and the alert-rule check.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Debian's prometheus package" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2
    else
        echo "test.sh: prometheus and promtool are needed (e.g. apt-get install prometheus)" >&2
        exit 1
    fi
fi

if [ "${CI:-}" = "true" ]; then
    cargo fmt --all -- --check
    cargo clippy --all-targets --locked -- -D warnings
fi
mkdir -p target
cargo test --all-targets --locked "$@" 2>&1 | tee target/test-output.txt


# On CI, also run the load benchmark's smoke version (it must work; its numbers are not judged
# here) and fuzz the request-to-record path briefly (scripts/fuzz.sh; cargo-fuzz is cached in ~/.cargo/bin).
if [ "${CI:-}" = "true" ] && [ "${FP_RELAY_SKIP_FUZZ:-}" != "1" ]; then
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
        scripts/fuzz.sh 30
        benches/load.sh --quick
fi

# One closing line for the whole run (the fuzz and benchmark output above would otherwise end it).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.txt
