#!/usr/bin/env bash
# Prints a directory holding `kubernetes-validate` (PyPI; it bundles the Kubernetes JSON
# schemas, so the manifests in deploy/kubernetes are checked offline by tests/deploy.rs). It is
# installed into a virtual environment in a cache that outlives the checkout, once. Safe to run
# several at a time (scripts/cache.sh). Override the cache with FP_RELAY_CACHE_DIR.
set -euo pipefail
. "$(dirname "$0")/cache.sh"

version=1.37.0
cache="$FP_RELAY_CACHE/kubernetes-validate-$version"
# Written last: a virtualenv cannot be moved into place, so its completeness is this file.
stamp="$cache/.complete"

install() {
    [ -f "$stamp" ] && return 0
    echo "ensure-kubernetes-validate: installing kubernetes-validate $version into $cache" >&2
    rm -rf "$cache"
    python3 -m venv "$cache" >&2
    "$cache/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version" >&2
    "$cache/bin/kubernetes-validate" --version >/dev/null
    touch "$stamp"
}

[ -f "$stamp" ] || with_lock kubernetes-validate install
echo "$cache/bin"
