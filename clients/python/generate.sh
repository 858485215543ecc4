#!/usr/bin/env bash
# Regenerates the committed gRPC stubs (src/tokenbroker/v1/token_service_pb2*.py and their
# typed .pyi) from ../../proto with the pinned grpcio-tools and mypy-protobuf
# (requirements-dev.txt). Run it after a change to the proto; commit what it writes.
# With an argument, writes into that directory instead (the stub test compares the two).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/src}"
mkdir -p "$out"
python3 -m grpc_tools.protoc \
    -I"$here/../../proto" \
    --python_out="$out" --grpc_python_out="$out" \
    --mypy_out="$out" --mypy_grpc_out="$out" \
    tokenbroker/v1/token_service.proto
