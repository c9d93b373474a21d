#!/usr/bin/env bash
# Installs the examples' pinned dependencies once into a cache that outlives the checkout, and
# prints two lines: the Python interpreter of a virtualenv with examples/*/requirements.txt, and
# a node_modules directory with examples/fulfiller-node's locked packages (for NODE_PATH).
# Keyed by a hash of the pins, so changing a pin installs afresh. Override the cache with
# FP_RELAY_CACHE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

cache="${FP_RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fp-relay}"
pins=$(cat examples/fulfiller-python/requirements.txt examples/consumer-python/requirements.txt | sha256sum | cut -c1-12)
venv="$cache/examples-python-$pins"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import confluent_kafka' 2>/dev/null; then
    echo "ensure-examples: installing the Python examples' dependencies into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r examples/fulfiller-python/requirements.txt -r examples/consumer-python/requirements.txt >&2
fi

lock=$(sha256sum examples/fulfiller-node/package-lock.json | cut -c1-12)
node_dir="$cache/examples-node-$lock"
if [ ! -f "$node_dir/node_modules/kafkajs/package.json" ]; then
    echo "ensure-examples: installing the Node.js example's dependencies into $node_dir" >&2
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp examples/fulfiller-node/package.json examples/fulfiller-node/package-lock.json "$node_dir/"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
fi

echo "$venv/bin/python"
echo "$node_dir/node_modules"
