#!/usr/bin/env python3
"""tokenbroker from Python (grpcio, stubs generated from proto/): every RPC against a
broker in front of the sandbox, each answer checked. Env: BROKER (host:port), SANDBOX (URL)."""
import importlib.resources
import json
import os
import sys
import tempfile
import urllib.request

from grpc_tools import protoc

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "proto")
OUT = tempfile.mkdtemp()
WELL_KNOWN = str(importlib.resources.files("grpc_tools") / "_proto")
if protoc.main(["protoc", f"-I{PROTO}", f"-I{WELL_KNOWN}", f"--python_out={OUT}",
                f"--grpc_python_out={OUT}", "tokenbroker/v1/token_service.proto"]) != 0:
    sys.exit("could not generate the stubs")
sys.path.insert(0, OUT)

import grpc  # noqa: E402
from tokenbroker.v1 import token_service_pb2 as pb  # noqa: E402
from tokenbroker.v1 import token_service_pb2_grpc as rpc  # noqa: E402


def platform(path, token):
    """Calls the sandbox platform's API with a token; returns its JSON answer."""
    request = urllib.request.Request(os.environ["SANDBOX"] + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as answer:
        return json.load(answer)


def check(condition, what):
    if not condition:
        sys.exit(f"python: FAILED: {what}")


stub = rpc.TokenServiceStub(grpc.insecure_channel(os.environ["BROKER"]))

org = stub.GetOrgToken(pb.GetOrgTokenRequest(), timeout=10).token
check(org.org == "demo" and org.access_token and org.generation >= 1, f"GetOrgToken: {org}")
check(platform("/api/v1/admin/organization", org.access_token)["organization"] == "demo", "org token accepted")

user = stub.GetUserToken(pb.GetUserTokenRequest(user_id="EMP-00002"), timeout=10).token
check(user.user_id == "EMP-00002" and user.expires_at.seconds > 0, f"GetUserToken: {user}")
check(platform("/api/v1/expense/me", user.access_token)["externalSourceId"] == "EMP-00002", "user token acts as the user")

watch = stub.WatchTokens(pb.WatchTokensRequest(user_ids=["EMP-00003"]), timeout=20)
first = next(watch)
check(first.reason == pb.TOKEN_EVENT_REASON_INITIAL and first.user_id == "EMP-00003", f"initial: {first}")
fresh = stub.Refresh(pb.RefreshRequest(user_id="EMP-00003", stale_access_token=first.token.access_token), timeout=10).token
check(fresh.generation == first.token.generation + 1 and fresh.access_token != first.token.access_token, f"Refresh: {fresh}")
pushed = next(watch)
check(pushed.reason == pb.TOKEN_EVENT_REASON_FORCED and pushed.token.access_token == fresh.access_token, f"pushed: {pushed}")
watch.cancel()

try:
    stub.GetUserToken(pb.GetUserTokenRequest(user_id="no-such-user"), timeout=10)
    check(False, "an unknown user must fail")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.NOT_FOUND, f"unknown user: {e.code()}")

print("python: 4 passed, 0 failed")
