#!/usr/bin/env bash
# Prints a directory holding `prometheus` and `promtool` (the alert-rule check and a real scrape
# in tests/operability.rs). They come from Debian's prometheus package, *unpacked* into a cache
# that outlives the checkout, never installed: installing it enables a service that would listen
# on 9090, the relay's default admin port. Safe to run several at a time (scripts/cache.sh).
# Override the cache with FP_RELAY_CACHE_DIR.
set -euo pipefail
. "$(dirname "$0")/cache.sh"

cache="$FP_RELAY_CACHE/prometheus"
bin="$cache/usr/bin"
ready() { [ -x "$bin/prometheus" ] && [ -x "$bin/promtool" ]; }

install() {
    ready && return 0
    if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
        echo "ensure-prometheus: need prometheus and promtool on PATH (or apt-get to fetch them)" >&2
        return 1
    fi
    echo "ensure-prometheus: fetching Debian's prometheus package into $cache (not installing it)" >&2
    mkdir -p "$FP_RELAY_CACHE"
    work=$(mktemp -d "$FP_RELAY_CACHE/.prometheus.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    # apt downloads as its _apt user, which cannot write into a private temporary directory.
    chmod 755 "$work"
    local sandbox=()
    if [ "$(id -u)" = 0 ]; then
        echo "ensure-prometheus: running as root: refreshing apt's package lists (apt-get update) first" >&2
        # apt's own lock: wait for another apt instead of failing at once.
        apt-get update -qq -o DPkg::Lock::Timeout=300 >&2
        sandbox=(-o APT::Sandbox::User=root)
    fi
    (cd "$work" && apt-get download -qq "${sandbox[@]}" prometheus >&2)
    dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
    "$work/root/usr/bin/promtool" --version >/dev/null
    # The unpacked tree appears whole or not at all.
    rm -rf "$cache"
    mv "$work/root" "$cache"
}

if ! ready; then
    if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
        dirname "$(command -v promtool)"
        exit 0
    fi
    with_lock prometheus install
fi
echo "$bin"
