#!/usr/bin/env bash
# curl through the demo broker's token-injecting proxy: plain HTTP with no token, answered
# by the sandbox's API as the org and as a user. Needs PROXY (host:port) from run.sh.
set -euo pipefail
: "${PROXY:?run from tests/interop/run.sh}"
org=$(curl -sS --fail "http://$PROXY/api/v1/admin/organization")
echo "$org" | grep -q '"organization":"demo"' || { echo "proxy: org answer: $org"; exit 1; }
me=$(curl -sS --fail -H 'Tokenbroker-User: EMP-00001' "http://$PROXY/api/v1/expense/me")
echo "$me" | grep -q '"externalSourceId":"EMP-00001"' || { echo "proxy: user answer: $me"; exit 1; }
# As curl's HTTP proxy: the request names any host; the org's api_url decides.
viaproxy=$(curl -sS --fail -x "http://$PROXY" "http://expense.invalid/api/v1/admin/organization")
echo "$viaproxy" | grep -q '"organization":"demo"' || { echo "proxy: -x answer: $viaproxy"; exit 1; }
# The proxy's own refusal: JSON, with its code in a header.
status=$(curl -sS -o /dev/null -w '%{http_code}' -H 'Tokenbroker-Org: globex' "http://$PROXY/api/v1/admin/organization")
[ "$status" = 404 ] || { echo "proxy: unknown org answered $status"; exit 1; }
echo "proxy (curl): 4 passed"
