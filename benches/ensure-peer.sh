#!/usr/bin/env bash
# Prints the Python interpreter of a virtualenv holding what ../shared/peer/peer_receiver.py needs
# (aiohttp, confluent-kafka), created once in the cache. Prints nothing and exits 1 when Python
# cannot install them; the load benchmark then says the peer was not measured. Safe to run
# several at a time (scripts/cache.sh).
set -euo pipefail
. "$(dirname "$0")/../scripts/cache.sh"
venv="$FP_RELAY_CACHE/peer-venv"

install() {
    [ -f "$venv/.complete" ] && return 0
    echo "ensure-peer: creating $venv (aiohttp, confluent-kafka)" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2 &&
        "$venv/bin/pip" install --quiet --disable-pip-version-check aiohttp confluent-kafka >&2 &&
        "$venv/bin/python" -c "import aiohttp, confluent_kafka" &&
        touch "$venv/.complete"
}

if [ ! -f "$venv/.complete" ] && ! with_lock peer install; then
    echo "ensure-peer: cannot install the peer receiver's packages" >&2
    exit 1
fi
echo "$venv/bin/python"
