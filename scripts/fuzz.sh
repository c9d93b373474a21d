#!/usr/bin/env bash
# Fuzzes for a bounded time (default 60 s per target), starting from the samples: `pipeline`
# (the request-to-record path) and `redact` (the byte splice against the tree walk, a
# differential target). Needs cargo-fuzz (`cargo install cargo-fuzz`); RUSTC_BOOTSTRAP lets the
# stable toolchain accept the sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
# The corpora start from samples/ (copied, not kept twice in the repository); what the fuzzer
# finds stays in corpus/<target> between runs (ignored by git). The redact target reads its
# first byte as the field list, so its copies get one in front.
mkdir -p corpus/pipeline corpus/redact
cp ../samples/v1/*.json ../samples/v2/*.json corpus/pipeline/
for sample in ../samples/v1/*.json ../samples/v2/*.json; do
    { printf '\007'; cat "$sample"; } > "corpus/redact/$(basename "$sample")"
done
for target in pipeline redact; do
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" "corpus/$target" -- -max_total_time="$seconds" -max_len=65536
done
