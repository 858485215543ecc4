"""The real processes the tests run against: the broker's built-in sandbox of the platform
and the broker in front of it, each on an ephemeral port (or a Unix socket), logging to a
file in the test's directory. Also a raw gRPC client, to act on the broker behind a
source's back."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from tokenbroker.v1 import token_service_pb2 as pb
from tokenbroker.v1 import token_service_pb2_grpc as rpc

REPO = Path(__file__).resolve().parents[3]
TOKENBROKER = os.environ.get("TOKENBROKER") or str(REPO / "target" / "debug" / "tokenbroker")

# How long anything may take on a loaded machine before a test gives up.
DEADLINE = 20.0


def eventually(check: Any, what: str, deadline: float = DEADLINE) -> Any:
    """Polls ``check()`` until it returns something truthy (returned), or fails the test."""
    end = time.monotonic() + deadline
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > end:
            raise AssertionError(f"not within {deadline:g} s: {what}")
        time.sleep(0.05)


class Process:
    """One tokenbroker process whose stderr goes to ``log``."""

    def __init__(self, args: list[str], log: Path, ready: str, env: dict[str, str] | None = None):
        self.log = log
        # A restart appends to the same log: only what this process writes counts.
        self._offset = log.stat().st_size if log.exists() else 0
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                [TOKENBROKER, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env={**os.environ, **(env or {})},
            )
        self.addr = self._wait_for(ready)

    def _wait_for(self, ready: str) -> str:
        """The ``addr=`` of the log line that holds ``ready``, once it is written."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            for line in self._output().splitlines():
                match = re.search(r"addr=(\S+)", line)
                if ready in line and match:
                    return match.group(1)
            if self.popen.poll() is not None:
                raise RuntimeError(f"tokenbroker exited {self.popen.returncode}: {self._output()}")
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"tokenbroker did not say {ready!r}: {self._output()}")

    def _output(self) -> str:
        with open(self.log, "rb") as log:
            log.seek(self._offset)
            return log.read().decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM (streams end with UNAVAILABLE), then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


class Sandbox:
    """The fake platform: org "demo", users EMP-00001..."""

    def __init__(self, workdir: Path, *, token_lifetime: str = "1h"):
        self.process = Process(
            ["sandbox", "--listen", "127.0.0.1:0", "--token-lifetime", token_lifetime],
            workdir / "sandbox.log",
            "sandbox listening",
        )
        self.url = f"http://{self.process.addr}"

    def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        """(status, JSON answer or None)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                raw = answer.read()
                return answer.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            return e.code, None

    def stats(self) -> dict[str, int]:
        status, stats = self.request("GET", "/sandbox/stats")
        assert status == 200
        return dict(stats)

    def revoke(self, access_token: str) -> None:
        assert self.request("POST", "/sandbox/revoke", {"access_token": access_token})[0] == 204

    def remove_user(self, user_id: str) -> None:
        status, _ = self.request(
            "POST", "/sandbox/remove-user", {"org": "demo", "user_id": user_id}
        )
        assert status == 204

    def stop(self) -> None:
        self.process.stop()


class Broker:
    """The broker in front of a sandbox. ``extra`` is appended to its config."""

    def __init__(
        self, workdir: Path, sandbox: Sandbox, *, listen: str = "127.0.0.1:0", extra: str = ""
    ):
        self.workdir = workdir
        self.config = workdir / "broker.toml"
        self.config.write_text(
            f"""
[orgs.demo]
token_url = "{sandbox.url}/oauth/token"
authorization_grant_url = "{sandbox.url}/oauth/authorization-grant"
client_id = "demo-client"
client_secret_env = "DEMO_SECRET"
{extra}
"""
        )
        self.process = self._start(listen)
        self.target = self.process.addr

    def _start(self, listen: str) -> Process:
        return Process(
            ["--config", str(self.config), "--listen", listen],
            self.workdir / "broker.log",
            "tokenbroker listening",
            env={"DEMO_SECRET": "demo-secret"},
        )

    def stop(self) -> None:
        self.process.stop()

    def restart(self) -> None:
        """Stops it and starts it again on the same address (retrying while the port is
        briefly busy)."""
        self.stop()
        end = time.monotonic() + DEADLINE
        while True:
            try:
                self.process = self._start(self.target)
                return
            except RuntimeError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.2)


def api_key_config(key: str) -> str:
    """A [[callers]] entry that lets ``key`` do everything."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"""
[[callers]]
name = "tests"
api_key_sha256 = ["{digest}"]
orgs = ["*"]
permissions = ["org_token", "user_token", "refresh", "watch"]
"""


class Raw:
    """A plain gRPC client of the broker, on its own channel."""

    def __init__(self, target: str, api_key: str | None = None):
        self.channel = grpc.insecure_channel(target)
        self.stub = rpc.TokenServiceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []

    def user_token(self, user_id: str) -> pb.Token:
        request = pb.GetUserTokenRequest(org="demo", user_id=user_id)
        return self.stub.GetUserToken(request, timeout=DEADLINE, metadata=self.metadata).token

    def org_token(self) -> pb.Token:
        request = pb.GetOrgTokenRequest(org="demo")
        return self.stub.GetOrgToken(request, timeout=DEADLINE, metadata=self.metadata).token

    def refresh(self, stale: str, user_id: str = "") -> pb.Token:
        request = pb.RefreshRequest(org="demo", user_id=user_id, stale_access_token=stale)
        return self.stub.Refresh(request, timeout=DEADLINE, metadata=self.metadata).token

    def close(self) -> None:
        self.channel.close()
