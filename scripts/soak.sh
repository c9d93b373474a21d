#!/usr/bin/env bash
# Broker faults under load, fulfilment on, for a few minutes: kills with empty restarts and
# SIGSTOP freezes of a real tansu broker while 4 clients post. Reports crashes (must be 0),
# acknowledged-but-lost events per broker epoch (must be 0) and recovery time after each fault.
# Usage: scripts/soak.sh [SECONDS]   (default 300; the test suite runs a 30 s version)
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
export TANSU_BIN
export FP_RELAY_SOAK_SECS="${1:-300}"
exec cargo test --locked --test recovery soak_ -- --nocapture
