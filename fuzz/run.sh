#!/usr/bin/env bash
# Runs each fuzz target for a short, fixed time (FUZZ_SECONDS, default 20) from its seeds
# in fuzz/seeds/, with cargo-fuzz on the nightly toolchain. The targets build in the dev
# profile (debug assertions and overflow checks on): from clean that took 2m51s here,
# against 5m27s for cargo-fuzz's default release build, and a 20 s run needs no speed. A crash fails the run and
# leaves its input in fuzz/artifacts/<target>/: make it a regression test beside the code
# it broke, then fix the code.
set -euo pipefail
cd "$(dirname "$0")"
# Its own target dir, whatever the caller's CARGO_TARGET_DIR (.ci/run builds it ahead).
export CARGO_TARGET_DIR="$PWD/target"
seconds=${FUZZ_SECONDS:-20}
cargo +nightly fuzz build --dev
for target in upstream_response config grpc_timeout; do
    corpus=$(mktemp -d)
    log="$corpus.log"
    echo "fuzz: $target for ${seconds}s"
    status=0
    cargo +nightly fuzz run --dev "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$seconds" > "$log" 2>&1 || status=$?
    grep -E "^Done|SUMMARY|panicked" "$log" || true
    rm -rf "$corpus"
    if [ "$status" -ne 0 ]; then
        tail -40 "$log"
        echo "fuzz: $target FAILED (input in fuzz/artifacts/$target)"
        exit 1
    fi
    rm -f "$log"
done
echo "fuzz: 3 targets ran, no crash"
