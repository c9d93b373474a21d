#!/usr/bin/env bash
# Regenerates vendor/rdkafka-sys: the published rdkafka-sys crate (from cargo's registry cache),
# without librdkafka's tests, packaging, examples and Windows files (the build needs none of them),
# with every vendor/patches/*.patch applied. Run it after changing a patch or bumping rdkafka-sys;
# the build itself never runs it (Cargo.toml's [patch.crates-io] points at the result).
set -euo pipefail
cd "$(dirname "$0")/.."

version=4.10.0+2.12.1
registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version" 2>/dev/null | head -1 || true)
if [ -z "$registry" ]; then
    # Fetch the pristine crate into the registry cache without the patch in the way.
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && cargo init -q --name fetch && cargo add -q "rdkafka-sys@=$version" && cargo fetch -q)
    registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"rdkafka-sys-$version" | head -1)
fi

rm -rf vendor/rdkafka-sys
cp -a "$registry" vendor/rdkafka-sys
rm -rf vendor/rdkafka-sys/librdkafka/{tests,packaging,examples,win32}
rm -f vendor/rdkafka-sys/{.cargo_vcs_info.json,.cargo-ok,Cargo.toml.orig}
# librdkafka-*.patch change the C library, rdkafka-sys-*.patch the crate around it.
for patch in vendor/patches/librdkafka-*.patch; do
    echo "applying $patch" >&2
    patch -d vendor/rdkafka-sys/librdkafka -p1 --no-backup-if-mismatch < "$patch"
done
for patch in vendor/patches/rdkafka-sys-*.patch; do
    echo "applying $patch" >&2
    patch -d vendor/rdkafka-sys -p1 --no-backup-if-mismatch < "$patch"
done
