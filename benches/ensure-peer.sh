#!/usr/bin/env bash
# Prints the Python interpreter of a virtualenv holding what ../shared/peer/peer_receiver.py needs
# (aiohttp, confluent-kafka), created once in the cache. Prints nothing and exits 1 when Python
# cannot install them; the load benchmark then says the peer was not measured.
set -euo pipefail
venv="${FP_RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fp-relay}/peer-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import aiohttp, confluent_kafka" 2>/dev/null; then
    echo "$venv/bin/python"
    exit 0
fi
echo "ensure-peer: creating $venv (aiohttp, confluent-kafka)" >&2
python3 -m venv "$venv" >&2 && "$venv/bin/pip" install --quiet aiohttp confluent-kafka >&2 || {
    echo "ensure-peer: cannot install the peer receiver's packages" >&2
    exit 1
}
echo "$venv/bin/python"
