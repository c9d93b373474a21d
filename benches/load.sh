#!/usr/bin/env bash
# The whole benchmark suite in one command (about 12 minutes on 2 cores):
#   criterion micro-benchmarks of the request-to-record path, then the load benchmark, which
#   rewrites benches/RESULTS.md: in one run, the HTTP ceiling, the best bare producer per
#   concurrency (linger.ms 0, 1 or 5), bare relays (hyper + rdkafka, nothing else) with
#   fp-relay's producer settings and at the best linger, side by side with fp-relay at each
#   level, the hand-written peer receiver (../shared/peer), fp-relay at linger.ms 1 and 5,
#   fulfilment round trips, 10,000 held requests and start-up. Extra arguments go to the load
#   benchmark: `--only relay,bare-same --levels 64 --duration 5` runs a part.
# `benches/load.sh --quick` is the short smoke run CI uses (writes nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
TANSU_BIN="${TANSU_BIN:-$(scripts/ensure-tansu.sh)}"
export TANSU_BIN
# The peer receiver (../shared/peer) needs aiohttp and confluent-kafka; without them it is skipped.
if PEER_PYTHON="$(benches/ensure-peer.sh)"; then export PEER_PYTHON; fi
cargo build --release --locked --bin fp-relay
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "${1:-}" = "--quick" ]; then
    cargo bench --locked --bench load -- --quick
else
    cargo bench --locked --bench pipeline -- --warm-up-time 1 --measurement-time 3 2>&1 | tee target/pipeline-bench.txt
    cargo bench --locked --bench load -- --full --out benches/RESULTS.md "$@"
    {
        echo
        echo "## Micro-benchmarks (criterion, \`cargo bench --bench pipeline\`)"
        echo
        echo '| benchmark | time per request |'
        echo '|---|---|'
        # criterion prints "name  time: [low mid high]", the name sometimes on a line of its own.
        # (a "change:" block repeats "time:" for the comparison with the last run: skip it)
        awk '/^(prepare|redaction)\//{name=$1} /change:/{skip=1; next} /time:/{if (skip) {skip=0; next} sub(/.*\[/,""); print "| " name " | " $3 " " $4 " |"}' target/pipeline-bench.txt
    } >> benches/RESULTS.md
fi
