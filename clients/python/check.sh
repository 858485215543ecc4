#!/usr/bin/env bash
# The Python client's checks, in one command (CI and tests/clients.rs run it): build the
# wheel and look inside it, import it from the wheel alone, mypy --strict, ruff, the tests
# against the real broker ($TOKENBROKER, default target/debug/tokenbroker). Assumes
# requirements-dev.txt is installed; installs nothing. Exits non-zero on any failure.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
failed=()

step() {
    local name="$1"
    shift
    echo "== $name"
    if ! "$@"; then
        echo "!! $name failed"
        failed+=("$name")
    fi
}

build_wheel() {
    # From a copy, so that setuptools' build/ and egg-info stay out of the work tree.
    mkdir "$tmp/pkg" && cp -r pyproject.toml README.md src "$tmp/pkg/" || return 1
    find "$tmp/pkg" -name __pycache__ -prune -exec rm -rf {} + || return 1
    python3 -m pip wheel --quiet --no-deps --no-build-isolation -w "$tmp/dist" "$tmp/pkg" || return 1
    local wheel
    wheel="$(ls "$tmp"/dist/tokenbroker-*.whl)" || return 1
    python3 - "$wheel" <<'PY'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
want = {"tokenbroker/py.typed", "tokenbroker/__init__.py", "tokenbroker/requests.py",
        "tokenbroker/httpx.py"} | {f"tokenbroker/v1/token_service_pb2{grpc}.{ext}"
        for grpc in ("", "_grpc") for ext in ("py", "pyi")}
missing = sorted(want - names)
if missing:
    sys.exit(f"the wheel lacks {missing}")
print(f"{sys.argv[1].rsplit('/', 1)[-1]}: {len(names)} files, py.typed and stubs in")
PY
}

# The wheel unpacked is the package as installed: it must import with neither the proto
# nor grpcio-tools at hand.
import_from_wheel() {
    python3 -m zipfile -e "$tmp"/dist/tokenbroker-*.whl "$tmp/site" || return 1
    (cd "$tmp" && PYTHONPATH="$tmp/site" python3 -c '
import sys
sys.modules["grpc_tools"] = None  # importing it fails
import tokenbroker, tokenbroker.requests, tokenbroker.httpx
assert tokenbroker.__file__.startswith(sys.argv[1]), tokenbroker.__file__
from tokenbroker import TokenSource, TokenError, Connection
print("imports from the wheel:", tokenbroker.__file__)
' "$tmp/site")
}

step "wheel" build_wheel
step "import from the wheel" import_from_wheel
step "mypy --strict" python3 -m mypy --cache-dir "$tmp/mypy"
step "ruff" python3 -m ruff check --no-cache . ../../examples/python
step "ruff format" python3 -m ruff format --no-cache --check . ../../examples/python
step "pytest" env PYTHONPATH="$here/src" python3 -m pytest -q -p no:cacheprovider tests

if [ ${#failed[@]} -eq 0 ]; then
    echo "python client: all checks passed (wheel, import from the wheel, mypy --strict, ruff, pytest)"
else
    echo "python client: FAILED: ${failed[*]}"
    exit 1
fi
