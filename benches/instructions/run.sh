#!/usr/bin/env bash
# Instructions per call in the broker, for a cached GetOrgToken (or GetUserToken) and for
# Health/Check on the same server: counted by callgrind, so the same build gives the same
# figures however busy the machine is (the timed benchmark cannot tell 1 % apart).
#
#   cargo build --release && benches/instructions/run.sh [org|user] [CALLS]
#
# Needs valgrind and Python's grpcio and grpcio-tools (tests/interop/python/requirements.txt).
# Prints the broker's instructions per call for each phase (two of each); keeps the
# callgrind files in target/instructions/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/../.."
kind=${1:-org}
calls=${2:-3000}
out=target/instructions
mkdir -p "$out"
rm -f "$out"/callgrind.out*
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    target/release/tokenbroker --listen "127.0.0.1:$port" >/dev/null 2>"$out/broker.log" &
broker=$!
trap 'kill -INT $broker 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    grep -q "readiness changed ready=true" "$out/broker.log" && break
    sleep 0.5
done
python3 benches/instructions/drive.py "$broker" "127.0.0.1:$port" "$calls" "$kind"
kill -INT $broker
wait $broker || true
trap - EXIT
for dump in "$out"/callgrind.out.*; do
    phase=$(sed -n 's/^desc: Trigger: dump //p' "$dump")
    total=$(sed -n 's/^summary: //p' "$dump")
    echo "$phase: $((total / calls)) instructions per call ($(basename "$dump"))"
done
