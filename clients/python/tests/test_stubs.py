"""The committed stubs are what generate.sh makes from the proto now."""

from __future__ import annotations

import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
COMMITTED = HERE / "src" / "tokenbroker" / "v1"
STUBS = [
    "token_service_pb2.py",
    "token_service_pb2.pyi",
    "token_service_pb2_grpc.py",
    "token_service_pb2_grpc.pyi",
]


def test_committed_stubs_equal_a_fresh_generation(tmp_path):
    subprocess.run(
        ["bash", str(HERE / "generate.sh"), str(tmp_path)], check=True, capture_output=True
    )
    fresh = tmp_path / "tokenbroker" / "v1"
    assert sorted(p.name for p in fresh.iterdir()) == sorted(STUBS)
    for name in STUBS:
        assert (fresh / name).read_text() == (COMMITTED / name).read_text(), (
            f"{name} is stale: run generate.sh"
        )
