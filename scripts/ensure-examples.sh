#!/usr/bin/env bash
# Installs the examples' pinned dependencies once into a cache that outlives the checkout, and
# prints two lines: the Python interpreter of a virtualenv with examples/*/requirements.txt, and
# a node_modules directory with examples/fulfiller-node's locked packages (for NODE_PATH).
# Keyed by a hash of the pins, so changing a pin installs afresh. Safe to run several at a time
# (scripts/cache.sh). Override the cache with FP_RELAY_CACHE_DIR.
set -euo pipefail
. "$(dirname "$0")/cache.sh"
cd "$(dirname "$0")/.."

pins=$(cat examples/fulfiller-python/requirements.txt examples/consumer-python/requirements.txt | sha256sum | cut -c1-12)
venv="$FP_RELAY_CACHE/examples-python-$pins"
lock=$(sha256sum examples/fulfiller-node/package-lock.json | cut -c1-12)
node_dir="$FP_RELAY_CACHE/examples-node-$lock"

# Each is complete once its stamp, written last, exists.
install_python() {
    [ -f "$venv/.complete" ] && return 0
    echo "ensure-examples: installing the Python examples' dependencies into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r examples/fulfiller-python/requirements.txt -r examples/consumer-python/requirements.txt >&2
    "$venv/bin/python" -c 'import confluent_kafka'
    touch "$venv/.complete"
}

install_node() {
    [ -f "$node_dir/.complete" ] && return 0
    echo "ensure-examples: installing the Node.js example's dependencies into $node_dir" >&2
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp examples/fulfiller-node/package.json examples/fulfiller-node/package-lock.json "$node_dir/"
    # npm's own cache is shared by every npm on the machine; a private one per install keeps
    # concurrent installs of other projects out of this one's way.
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error --cache "$node_dir/.npm" >&2)
    rm -rf "$node_dir/.npm"
    [ -f "$node_dir/node_modules/kafkajs/package.json" ]
    touch "$node_dir/.complete"
}

[ -f "$venv/.complete" ] || with_lock examples-python install_python
[ -f "$node_dir/.complete" ] || with_lock examples-node install_node
echo "$venv/bin/python"
echo "$node_dir/node_modules"
