#!/usr/bin/env python3
"""Get an org token and a user token from tokenbroker, and watch the org token.
pip install grpcio grpcio-tools; run from the repository root: python3 examples/python/get_token.py"""
import importlib.resources, os, sys, tempfile
from grpc_tools import protoc

# Generate the stubs from proto/ (a real project would generate them once, at build time).
out = tempfile.mkdtemp()
protoc.main(["protoc", "-Iproto", f"-I{importlib.resources.files('grpc_tools') / '_proto'}",
             f"--python_out={out}", f"--grpc_python_out={out}", "tokenbroker/v1/token_service.proto"])
sys.path.insert(0, out)
import grpc
from tokenbroker.v1 import token_service_pb2 as pb, token_service_pb2_grpc as rpc

broker = rpc.TokenServiceStub(grpc.insecure_channel(os.environ.get("BROKER", "127.0.0.1:50051")))
# With callers configured, send your API key: metadata=[("authorization", "Bearer " + key)].

org = broker.GetOrgToken(pb.GetOrgTokenRequest(), timeout=10).token
print(f"org token for {org.org}, generation {org.generation}, expires {org.expires_at.ToJsonString()}")

user = broker.GetUserToken(pb.GetUserTokenRequest(user_id="EMP-00001"), timeout=10).token
print(f"user token for {user.user_id}: Authorization: Bearer {user.access_token[:8]}...")

# The current token at once, then every new one: keep the newest and use it.
for message in broker.WatchTokens(pb.WatchTokensRequest(), timeout=5):
    print(f"{pb.TokenEventReason.Name(message.reason)}: generation {message.token.generation}")
    break
