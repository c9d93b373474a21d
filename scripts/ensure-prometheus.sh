#!/usr/bin/env bash
# Prints a directory holding `prometheus` and `promtool` (the alert-rule check and a real scrape
# in tests/operability.rs). They come from Debian's prometheus package, *unpacked* into a cache
# that outlives the checkout, never installed: installing it enables a service that would listen
# on 9090, the relay's default admin port. Override the cache with FP_RELAY_CACHE_DIR.
set -euo pipefail

cache="${FP_RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fp-relay}/prometheus"
bin="$cache/usr/bin"
if [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ]; then
    echo "$bin"
    exit 0
fi
if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    dirname "$(command -v promtool)"
    exit 0
fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    echo "ensure-prometheus: need prometheus and promtool on PATH (or apt-get to fetch them)" >&2
    exit 1
fi

echo "ensure-prometheus: fetching Debian's prometheus package into $cache (not installing it)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sandbox=()
if [ "$(id -u)" = 0 ]; then
    echo "ensure-prometheus: running as root: refreshing apt's package lists (apt-get update) first" >&2
    apt-get update -qq >&2
    # apt downloads as its _apt user, which cannot write into a private temporary directory.
    sandbox=(-o APT::Sandbox::User=root)
fi
(cd "$work" && apt-get download -qq "${sandbox[@]}" prometheus >&2)
mkdir -p "$cache"
dpkg-deb -x "$work"/prometheus_*.deb "$cache"
"$bin/promtool" --version >/dev/null
echo "$bin"
