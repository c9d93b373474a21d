#!/usr/bin/env bash
# Prints a directory holding `kubernetes-validate` (PyPI; it bundles the Kubernetes JSON
# schemas, so the manifests in deploy/kubernetes are checked offline by tests/deploy.rs). It is
# installed into a virtual environment in a cache that outlives the checkout, once. Override the
# cache with FP_RELAY_CACHE_DIR.
set -euo pipefail

version=1.37.0
cache="${FP_RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fp-relay}/kubernetes-validate-$version"
if [ -x "$cache/bin/kubernetes-validate" ]; then
    echo "$cache/bin"
    exit 0
fi
echo "ensure-kubernetes-validate: installing kubernetes-validate $version into $cache" >&2
python3 -m venv "$cache" >&2
"$cache/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version" >&2
echo "$cache/bin"
