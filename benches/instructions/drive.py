#!/usr/bin/env python3
"""Drives a broker that runs under callgrind (see run.sh): Health/Check and then the measured
RPC, CALLS of each with 64 in flight, callgrind's counters zeroed before and dumped after
each phase, twice over; user tokens for USERS users (default 50) are fetched first, then
called round robin. Usage: drive.py PID ADDR CALLS org|user [USERS]"""
import importlib.resources
import os
import subprocess
import sys
import tempfile

from grpc_tools import protoc

HEALTH = """syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse { int32 status = 1; }
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = tempfile.mkdtemp()
WELL_KNOWN = str(importlib.resources.files("grpc_tools") / "_proto")
# The health proto goes in a directory of its own name: `grpc.health` would collide with
# the grpc package.
os.makedirs(os.path.join(OUT, "src", "hc"))
with open(os.path.join(OUT, "src", "hc", "health.proto"), "w") as f:
    f.write(HEALTH)
for include, proto in [(os.path.join(ROOT, "proto"), "tokenbroker/v1/token_service.proto"),
                       (os.path.join(OUT, "src"), "hc/health.proto")]:
    if protoc.main(["protoc", f"-I{include}", f"-I{WELL_KNOWN}", f"--python_out={OUT}",
                    f"--grpc_python_out={OUT}", proto]) != 0:
        sys.exit("could not generate the stubs")
sys.path.insert(0, OUT)

import grpc  # noqa: E402
from hc import health_pb2, health_pb2_grpc  # noqa: E402
from tokenbroker.v1 import token_service_pb2 as pb, token_service_pb2_grpc as rpc  # noqa: E402

pid, addr, calls, kind = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
held = int(sys.argv[5]) if len(sys.argv) > 5 else 50
channel = grpc.insecure_channel(addr)
health = health_pb2_grpc.HealthStub(channel)
tokens = rpc.TokenServiceStub(channel)
users = [f"EMP-{n:05d}" for n in range(1, held + 1)]


def check(i):
    return health.Check.future(health_pb2.HealthCheckRequest(), timeout=600)


def org_token(i):
    return tokens.GetOrgToken.future(pb.GetOrgTokenRequest(), timeout=600)


def user_token(i):
    # Strided, so that consecutive calls touch users far apart in memory.
    return tokens.GetUserToken.future(
        pb.GetUserTokenRequest(user_id=users[(i * 7919) % len(users)]), timeout=600)


measured = {"org": org_token, "user": user_token}[kind]


def run(call, n):
    in_flight = []
    for i in range(n):
        in_flight.append(call(i))
        if len(in_flight) >= 64:
            in_flight.pop(0).result()
    for f in in_flight:
        f.result()


def callgrind(*args):
    subprocess.run(["callgrind_control", *args, pid], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


run(check, 200)  # warm-up: connections, caches (the user tokens fetched)
run(measured, max(200, held) if kind == "user" else 200)
for phase, call in [("health", check), (kind, measured), ("health", check), (kind, measured)]:
    callgrind("-z")
    run(call, calls)
    callgrind("-d", phase)
