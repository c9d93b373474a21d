#!/usr/bin/env bash
# Fuzzes the request-to-record path for a bounded time (default 60 s), starting from the
# samples. Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the stable
# toolchain accept the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
# The corpus starts from samples/ (copied, not kept twice in the repository); what the fuzzer
# finds stays in corpus/pipeline between runs (ignored by git).
mkdir -p corpus/pipeline
cp ../samples/v1/*.json ../samples/v2/*.json corpus/pipeline/
RUSTC_BOOTSTRAP=1 cargo fuzz run pipeline corpus/pipeline -- -max_total_time="$seconds" -max_len=65536
