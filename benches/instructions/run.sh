#!/usr/bin/env bash
# Instructions per call in the broker, for a cached GetOrgToken (or GetUserToken) and for
# Health/Check on the same server: counted by callgrind, so the same build gives the same
# figures however busy the machine is (the timed benchmark cannot tell 1 % apart).
#
#   cargo build --release && benches/instructions/run.sh [org|user] [CALLS]
#   EXTRA_TOML='[audit]\nevery_call = true' benches/instructions/run.sh org
#
# USERS=100000 benches/instructions/run.sh user: the user tokens held (and called, round
# robin); default 50. More than the demo's 100 also runs the broker from a config.
# With EXTRA_TOML the broker runs from a config (the sandbox as its own process, org
# "demo") with those lines added, instead of in demo mode: for a non-default setting.
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
args=(demo --listen "127.0.0.1:$port")
sandbox=
users=${USERS:-50}
if [[ -n "${EXTRA_TOML:-}" || "$users" -gt 100 ]]; then
    sandbox_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    target/release/tokenbroker sandbox --listen "127.0.0.1:$sandbox_port" --users "$((users > 100 ? users : 100))" 2>"$out/sandbox.log" &
    sandbox=$!
    printf '%b\n[orgs.demo]\ntoken_url = "http://127.0.0.1:%s/oauth/token"\nauthorization_grant_url = "http://127.0.0.1:%s/oauth/authorization-grant"\nclient_id = "demo-client"\nclient_secret_env = "DEMO_SECRET"\n' \
        "${EXTRA_TOML:-}" "$sandbox_port" "$sandbox_port" >"$out/broker.toml"
    args=(--listen "127.0.0.1:$port" --config "$out/broker.toml")
    sleep 1
fi
DEMO_SECRET=demo-secret RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    target/release/tokenbroker "${args[@]}" >/dev/null 2>"$out/broker.log" &
broker=$!
trap 'kill -INT $broker 2>/dev/null || true; [[ -z "$sandbox" ]] || kill $sandbox 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    grep -q "readiness changed ready=true" "$out/broker.log" && break
    sleep 0.5
done
python3 benches/instructions/drive.py "$broker" "127.0.0.1:$port" "$calls" "$kind" "$users"
kill -INT $broker
wait $broker || true
[[ -z "$sandbox" ]] || kill $sandbox 2>/dev/null || true
trap - EXIT
for dump in "$out"/callgrind.out.*; do
    phase=$(sed -n 's/^desc: Trigger: dump //p' "$dump")
    total=$(sed -n 's/^summary: //p' "$dump")
    echo "$phase: $((total / calls)) instructions per call ($(basename "$dump"))"
done
