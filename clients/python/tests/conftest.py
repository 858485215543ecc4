"""Fixtures: every test that needs the broker starts its own sandbox and broker through
``procs`` and has them stopped at its end, pass or fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from brokers import Broker, Raw, Sandbox


class Processes:
    """Starts sandboxes, brokers and raw clients for one test, and ends them all."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._started: list[Any] = []

    def sandbox(self, **kwargs: Any) -> Sandbox:
        sandbox = Sandbox(self.workdir, **kwargs)
        self._started.append(sandbox)
        return sandbox

    def broker(self, sandbox: Sandbox, **kwargs: Any) -> Broker:
        broker = Broker(self.workdir, sandbox, **kwargs)
        self._started.append(broker)
        return broker

    def raw(self, target: str, api_key: str | None = None) -> Raw:
        raw = Raw(target, api_key)
        self._started.append(raw)
        return raw

    def close(self) -> None:
        for thing in reversed(self._started):
            if isinstance(thing, Raw):
                thing.close()
            else:
                thing.process.kill()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    try:
        yield processes
    finally:
        processes.close()


@pytest.fixture
def demo(procs: Processes) -> tuple[Sandbox, Broker]:
    """A sandbox with hour-long tokens and a broker in front of it."""
    sandbox = procs.sandbox()
    return sandbox, procs.broker(sandbox)


@pytest.fixture
def unauthorized() -> Iterator[Any]:
    """A local HTTP server that answers 401 to everything."""
    from httpservers import AlwaysUnauthorized

    server = AlwaysUnauthorized()
    try:
        yield server
    finally:
        server.close()
