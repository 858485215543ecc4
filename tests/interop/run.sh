#!/usr/bin/env bash
# Runs the Python, Node and grpcurl clients against a real broker (demo mode, in front of
# its built-in sandbox), and curl through its token-injecting proxy. Needs: cargo, python3 with grpcio + grpcio-tools, node with
# tests/interop/node's packages installed, grpcurl (see .ci/run for the installs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cargo build --quiet --manifest-path "$root/Cargo.toml" --bin tokenbroker --example watch_token
log=$(mktemp)
"${CARGO_TARGET_DIR:-$root/target}/debug/tokenbroker" demo --listen 127.0.0.1:0 > "$log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "token-injecting proxy listening" "$log" && break; sleep 0.1; done
BROKER=$(grep "tokenbroker listening" "$log" | grep -o 'addr=[0-9.:]*' | tail -1 | cut -d= -f2)
SANDBOX=$(grep -o 'built-in sandbox at http://[0-9.:]*' "$log" | head -1 | awk '{print $4}')
PROXY=$(grep -o 'curl http://[0-9.:]*/api/v1/admin/organization' "$log" | head -1 | sed 's|curl http://||; s|/api.*||')
[ -n "$BROKER" ] && [ -n "$SANDBOX" ] && [ -n "$PROXY" ] || { echo "the broker did not start:"; cat "$log"; exit 1; }
export BROKER SANDBOX PROXY
echo "broker at $BROKER, sandbox at $SANDBOX"

failed=0
python3 "$here/python/client.py" || failed=$((failed + 1))
node "$here/node/client.js" || failed=$((failed + 1))
"$here/grpcurl.sh" || failed=$((failed + 1))
TOKENBROKER="${CARGO_TARGET_DIR:-$root/target}/debug/tokenbroker" "$here/unix.sh" || failed=$((failed + 1))
"$here/proxy.sh" || failed=$((failed + 1))
# The README's examples run too, so they cannot rot.
cd "$root"
# The Python example needs the client installed (pip install ./clients/python, as .ci/run
# does) and the Node one `npm install` in clients/node.
python3 examples/python/get_token.py > /dev/null || { echo "examples/python failed"; failed=$((failed + 1)); }
node examples/node/get_token.js > /dev/null || { echo "examples/node failed"; failed=$((failed + 1)); }
"${CARGO_TARGET_DIR:-$root/target}/debug/examples/watch_token" "$BROKER" 2 > /dev/null || { echo "examples/watch_token.rs failed"; failed=$((failed + 1)); }
examples/grpcurl.sh > /dev/null 2>&1 || { echo "examples/grpcurl.sh failed"; failed=$((failed + 1)); }
echo "interop: $((9 - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
