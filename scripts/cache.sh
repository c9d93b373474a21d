# Sourced by the ensure-* scripts: one cache that outlives the checkout, and one installer at a
# time per thing installed.
#
# A fresh machine runs test binaries in parallel, and several of them may ask for the same tool
# before it exists. Every installer therefore (1) takes an exclusive lock named after what it
# installs (flock(1): the kernel releases it when the holder dies, so a killed install leaves no
# stale lock), (2) looks again once it holds the lock, since another process may have finished
# meanwhile, and (3) marks the result complete only after it works (a stamp file written last,
# or a rename into place), so a half-made install is never taken for a whole one.
#
# FP_RELAY_CACHE_DIR overrides the cache (default ~/.cache/fp-relay).

FP_RELAY_CACHE="${FP_RELAY_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fp-relay}"

# with_lock NAME COMMAND...: runs COMMAND holding the cache's lock NAME (waits up to 20 minutes:
# a first install of the examples' packages takes a few).
with_lock() {
    local name="$1"
    shift
    mkdir -p "$FP_RELAY_CACHE/.locks"
    (
        if ! flock --exclusive --wait 1200 9; then
            echo "$(basename "$0"): gave up waiting for $FP_RELAY_CACHE/.locks/$name.lock" >&2
            exit 1
        fi
        "$@"
    ) 9>"$FP_RELAY_CACHE/.locks/$name.lock"
}
