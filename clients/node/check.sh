#!/usr/bin/env bash
# The Node client's checks and tests in one command, for people, CI and tests/clients.rs:
# the declarations type-check (tsc --noEmit), the package ships what it must (npm pack
# --dry-run), it loads through require() and import, and the tests pass against the real
# broker (TOKENBROKER, default target/debug/tokenbroker). Installs nothing: run
# `npm install` here first. Exits non-zero on any failure; the last line is
# a one-line summary.
set -uo pipefail
cd "$(dirname "$0")"
export TOKENBROKER="${TOKENBROKER:-$(cd ../.. && pwd)/target/debug/tokenbroker}"

passed=0
failed=0
step() { echo "--- $1"; }
ok() { passed=$((passed + 1)); echo "ok: $1"; }
fail() { failed=$((failed + 1)); echo "FAILED: $1"; }
summary() {
    echo "clients/node: $passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

if [ ! -x node_modules/.bin/tsc ] || [ ! -d node_modules/@grpc/grpc-js ]; then
    fail "node_modules is missing: run \`npm install\` in clients/node first"
    summary
fi
if [ ! -x "$TOKENBROKER" ]; then
    fail "no broker binary at TOKENBROKER=$TOKENBROKER"
    summary
fi

step "tsc --noEmit (index.d.ts, index.d.mts, test/types.ts, test/types-esm.mts)"
if node_modules/.bin/tsc --noEmit -p tsconfig.json; then ok "types compile"; else fail "tsc"; fi

step "npm pack --dry-run"
if packed=$(npm pack --dry-run --json 2> /dev/null) && node -e '
    const files = JSON.parse(process.argv[1])[0].files.map((f) => f.path).sort();
    console.log(files.join("\n"));
    const need = ["index.js", "index.mjs", "index.d.ts", "index.d.mts", "proto.json", "package.json",
      "README.md", "lib/source.js", "lib/connection.js", "lib/descriptor.js", "lib/fetch.js"];
    const missing = need.filter((f) => !files.includes(f));
    const extra = files.filter((f) => /^(test|node_modules)\//.test(f) || f === "generate.js" || f === "check.sh");
    if (missing.length || extra.length) {
      console.error(`missing: ${missing.join(", ") || "none"}; should not ship: ${extra.join(", ") || "none"}`);
      process.exit(1);
    }' "$packed"; then
    ok "the package ships its code, declarations and proto.json"
else
    fail "npm pack"
fi

step "require('tokenbroker') and import('tokenbroker')"
if node -e '
    const cjs = require("tokenbroker");
    import("tokenbroker").then((esm) => {
      for (const name of ["TokenSource", "TokenError", "Connection", "withToken"]) {
        if (typeof cjs[name] !== "function") throw new Error(`require: no ${name}`);
        if (esm[name] !== cjs[name]) throw new Error(`import: ${name} differs from require`);
      }
      console.log("both load, with the same four exports");
    }).catch((e) => { console.error(e); process.exit(1); });' \
    && node --input-type=module -e 'import { TokenSource, withToken } from "tokenbroker"; if (typeof TokenSource !== "function" || typeof withToken !== "function") process.exit(1);'
then
    ok "CommonJS and ESM entry points"
else
    fail "loading the package"
fi

step "node --test test/*.test.js (TOKENBROKER=$TOKENBROKER)"
tap=$(mktemp)
trap 'rm -f "$tap"' EXIT
node --test --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$tap" test/*.test.js
status=$?
checks=$passed
tests_passed=$(grep -E '^# pass ' "$tap" | tail -1 | awk '{print $3}')
tests_failed=$(grep -E '^# fail ' "$tap" | tail -1 | awk '{print $3}')
passed=$((passed + ${tests_passed:-0}))
failed=$((failed + ${tests_failed:-0}))
if [ "$status" -ne 0 ] && [ "${tests_failed:-0}" -eq 0 ]; then fail "node --test exited $status"; fi
echo "package checks: $checks of 3 passed; tests: ${tests_passed:-0} passed, ${tests_failed:-0} failed"
summary
