#!/usr/bin/env bash
# tokenbroker from grpcurl, through server reflection only: every RPC against a broker in
# front of the sandbox, each answer checked. Env: BROKER (host:port).
set -euo pipefail
call() { grpcurl -plaintext -max-time 10 -d "$2" "$BROKER" "tokenbroker.v1.TokenService/$1"; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval('d' + sys.argv[1]))" "$1"; }
fail() { echo "grpcurl: FAILED: $*" >&2; exit 1; }

grpcurl -plaintext "$BROKER" list | grep -qx tokenbroker.v1.TokenService || fail "reflection lists no TokenService"
[ "$(call GetOrgToken '{}' | field "['token']['org']")" = demo ] || fail GetOrgToken
[ "$(call GetUserToken '{"user_id": "EMP-00006"}' | field "['token']['userId']")" = EMP-00006 ] || fail GetUserToken

out=$(mktemp)
grpcurl -plaintext -max-time 6 -d '{"user_ids": ["EMP-00007"]}' "$BROKER" tokenbroker.v1.TokenService/WatchTokens > "$out" 2>/dev/null &
watcher=$!
for _ in $(seq 50); do grep -q INITIAL "$out" && break; sleep 0.1; done
grep -q TOKEN_EVENT_REASON_INITIAL "$out" || fail "WatchTokens sent no initial token"
# The Refresh names the token it saw as stale (one naming none, within a second of the last
# rotation, gets the current token: renewal.min_rotation_interval).
initial=$(python3 - "$out" <<'PY'
import json, sys
message, _ = json.JSONDecoder().raw_decode(open(sys.argv[1]).read().lstrip())
print(message["token"]["accessToken"])
PY
)
fresh=$(call Refresh "{\"user_id\": \"EMP-00007\", \"stale_access_token\": \"$initial\"}" | field "['token']['accessToken']")
for _ in $(seq 50); do grep -q FORCED "$out" && break; sleep 0.1; done
python3 - "$out" "$fresh" <<'PY' || fail "WatchTokens did not push the rotation"
import json, sys
text, fresh, decoder, at, messages = open(sys.argv[1]).read(), sys.argv[2], json.JSONDecoder(), 0, []
while text[at:].strip():
    message, at = decoder.raw_decode(text, at + (len(text[at:]) - len(text[at:].lstrip())))
    messages.append(message)
assert messages[0]["reason"] == "TOKEN_EVENT_REASON_INITIAL" and messages[0]["token"]["generation"] == "1", messages
assert messages[1]["reason"] == "TOKEN_EVENT_REASON_FORCED" and messages[1]["token"]["accessToken"] == fresh, messages
PY
kill "$watcher" 2>/dev/null || true

if call GetUserToken '{"user_id": "no-such-user"}' 2> "$out" >/dev/null; then fail "an unknown user must fail"; fi
grep -q NotFound "$out" || fail "unknown user is not NOT_FOUND: $(cat "$out")"
echo "grpcurl: 4 passed, 0 failed"
