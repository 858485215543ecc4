#!/usr/bin/env bash
# Standard gRPC clients over the broker's Unix socket: the grpcurl commands demo mode
# prints, run as printed, and grpcio (which sends the socket's path as :authority, as
# grpcurl does; h2 alone resets such streams). Env: TOKENBROKER (the binary).
set -euo pipefail
fail() { echo "unix: FAILED: $*" >&2; exit 1; }
dir=$(mktemp -d)
log="$dir/log"
"$TOKENBROKER" demo --listen "unix://$dir/broker.sock" > "$log" 2>&1 &
broker=$!
trap 'kill $broker 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do grep -q "tokenbroker listening" "$log" && break; sleep 0.1; done
grep -q "tokenbroker listening" "$log" || { cat "$log"; fail "the broker did not start"; }

mapfile -t printed < <(grep -E '^\s+grpcurl ' "$log" | sed 's/^ *//')
[ "${#printed[@]}" -ge 3 ] || fail "demo mode printed no grpcurl commands: $(cat "$log")"
for command in "${printed[@]}"; do
    if [[ "$command" == *WatchTokens* ]]; then
        # A stream: its first message, then grpcurl's deadline ends it.
        eval "${command/grpcurl /grpcurl -max-time 3 }" > "$dir/out" 2>&1 || true
        grep -q TOKEN_EVENT_REASON_INITIAL "$dir/out" || fail "$command: $(cat "$dir/out")"
    else
        eval "$command" > "$dir/out" 2>&1 || fail "$command: $(cat "$dir/out")"
    fi
    if [[ "$command" == *GetUserToken* ]]; then
        grep -q accessToken "$dir/out" || fail "$command returned no token: $(cat "$dir/out")"
    fi
done

SOCKET="$dir/broker.sock" python3 - <<'PY' || fail "grpcio over the Unix socket"
import os, grpc
from grpc_tools import protoc  # noqa: F401 (installed with the interop requirements)
channel = grpc.insecure_channel("unix://" + os.environ["SOCKET"])
# GetOrgToken with an empty request: the answer's bytes hold the org's name.
answer = channel.unary_unary("/tokenbroker.v1.TokenService/GetOrgToken")(b"", timeout=10)
assert b"demo" in answer, answer
PY
echo "unix: $(( ${#printed[@]} + 1 )) passed, 0 failed"
