#!/usr/bin/env bash
# What one request costs, counted: instructions and heap allocations per request of the whole
# process (every thread, librdkafka's included) under valgrind's callgrind, for fp-relay and for
# a bare relay writing the identical record (benches/cost.rs says how), one request at a time and
# in batches of 32. Prints one row per measure ending in fp-relay's ratio to the bare relay.
# About 2.5 minutes on two cores (fp-relay alone about 1.5: a minute of it is waiting for its reply
# consumer to rest).
#   benches/cost.sh              the table
#   benches/cost.sh --check      also fails when fp-relay's instructions per request exceed
#                                benches/cost-baseline.txt by more than 5 % (CI runs this)
#   benches/cost.sh --update     writes fp-relay's figures to benches/cost-baseline.txt: only in
#                                the commit that moves them, saying why
# Other arguments go to the bench (`--requests 400 --batches 1 --only fp-relay`). The callgrind
# dumps stay in target/cost/<target>-c<batch>/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "cost: valgrind is not installed" >&2; exit 1; }
TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
export TANSU_BIN
mode=""
case "${1:-}" in --check | --update) mode=$1; shift ;; esac
cargo build --release --locked --bin fp-relay
mkdir -p target
cargo bench --locked --bench cost -- --run "$@" | tee target/cost.txt

baseline=benches/cost-baseline.txt
# "instructions per request, batch 1 | fp-relay 250,936 | ..." -> "1 250936"
current() {
    awk -F' [|] ' '/^instructions per request, batch/ {
        split($1, a, "batch "); v = $2; sub(/^fp-relay /, "", v); gsub(/,/, "", v); print a[2], v }' target/cost.txt
}
if [ "$mode" = "--update" ]; then
    {
        echo "# fp-relay's instructions per request under callgrind (benches/cost.sh): batch, count."
        echo "# benches/cost.sh --check fails when a figure rises more than 5 % above these. Update"
        echo "# them (benches/cost.sh --update) in the commit that moves them, saying why."
        current
    } >"$baseline"
    echo "cost: wrote $baseline"
elif [ "$mode" = "--check" ]; then
    status=0
    while read -r batch now; do
        before=$(awk -v b="$batch" '$1 == b { print $2 }' "$baseline")
        [ -n "$before" ] || { echo "cost: no baseline for batch $batch" >&2; status=1; continue; }
        if awk -v n="$now" -v b="$before" 'BEGIN { exit !(n > b * 1.05) }'; then
            echo "cost: batch $batch: $now instructions per request, over the baseline $before by more than 5 %" >&2
            status=1
        else
            echo "cost: batch $batch: $now instructions per request (baseline $before): ok"
        fi
    done < <(current)
    exit "$status"
fi
