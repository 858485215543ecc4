#!/usr/bin/env python3
"""The current tokenbroker access tokens with the Python client (clients/python).

pip install ./clients/python, start `tokenbroker demo`, then: python3 examples/python/get_token.py
BROKER: the broker's address (default 127.0.0.1:50051)."""

import os

from tokenbroker import Connection, TokenSource

# One connection, shared by both sources. With callers configured: api_key="..."; for TLS:
# root_certificates=open("ca.pem", "rb").read().
broker = Connection(os.environ.get("BROKER", "127.0.0.1:50051"))
with TokenSource(broker) as org, TokenSource(broker, user_id="EMP-00001") as user:
    # Each source follows its key's WatchTokens stream: token() answers from memory.
    print(f"org token: Authorization: Bearer {org.token()[:8]}...")
    token = user.token()
    print(f"EMP-00001's token: Authorization: Bearer {token[:8]}...")
    # When the platform rejects a token: one Refresh however many callers saw it rejected
    # (tokenbroker.requests.BearerAuth and tokenbroker.httpx.BearerAuth do this for you).
    print(f"EMP-00001's token after a refresh: Bearer {user.refresh(token)[:8]}...")
broker.close()
