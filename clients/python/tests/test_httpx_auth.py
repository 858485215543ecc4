"""tokenbroker.httpx.BearerAuth, sync and async: a 401 costs one Refresh and one retry; a
second 401 and a streamed body are the caller's; the async flow keeps the event loop free."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import httpx

from tokenbroker import TokenSource
from tokenbroker.httpx import BearerAuth


def test_sync_a_revoked_token_costs_one_refresh_and_one_retry(demo):
    sandbox, broker = demo
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        with httpx.Client(base_url=sandbox.url, auth=BearerAuth(src), timeout=10) as client:
            first = client.get("/api/v1/expense/me")
            assert first.status_code == 200
            assert first.json()["externalSourceId"] == "EMP-00001"

            sent = src.token()
            sandbox.revoke(sent)
            before = sandbox.stats()
            answer = client.get("/api/v1/expense/me")
            after = sandbox.stats()

        assert answer.status_code == 200
        assert answer.json()["externalSourceId"] == "EMP-00001"
        assert [r.status_code for r in answer.history] == [401]
        assert after["refresh_token"] - before["refresh_token"] == 1
        assert after["api"] - before["api"] == 2
        assert src.token() != sent


def test_async_a_revoked_token_costs_one_refresh_and_one_retry(demo):
    sandbox, broker = demo

    async def scenario(src: TokenSource) -> None:
        async with httpx.AsyncClient(
            base_url=sandbox.url, auth=BearerAuth(src), timeout=10
        ) as client:
            first = await client.get("/api/v1/expense/me")
            assert first.status_code == 200
            assert first.json()["externalSourceId"] == "EMP-00001"

            sent = src.token()
            sandbox.revoke(sent)
            before = sandbox.stats()
            answer = await client.get("/api/v1/expense/me")
            after = sandbox.stats()

        assert answer.status_code == 200
        assert answer.json()["externalSourceId"] == "EMP-00001"
        assert [r.status_code for r in answer.history] == [401]
        assert after["refresh_token"] - before["refresh_token"] == 1
        assert after["api"] - before["api"] == 2
        assert src.token() != sent

    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        asyncio.run(scenario(src))


def test_sync_a_second_401_is_returned_and_a_stream_is_not_sent_again(demo, unauthorized):
    _, broker = demo
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        with httpx.Client(auth=BearerAuth(src), timeout=10) as client:
            sent = src.token()
            answer = client.post(unauthorized.url, content=b"payload")
            assert answer.status_code == 401
            (auth1, body1), (auth2, body2) = unauthorized.seen
            assert auth1 == f"Bearer {sent}"
            assert auth2 == f"Bearer {src.token()}" != auth1
            assert body1 == body2 == b"payload"

            unauthorized.seen.clear()
            current = src.token()
            answer = client.post(unauthorized.url, content=iter([b"pay", b"load"]))
            assert answer.status_code == 401
            assert unauthorized.seen == [(f"Bearer {current}", b"payload")]


def test_async_a_second_401_is_returned_and_a_stream_is_not_sent_again(demo, unauthorized):
    _, broker = demo

    async def streamed() -> AsyncIterator[bytes]:
        yield b"pay"
        yield b"load"

    async def scenario(src: TokenSource) -> None:
        async with httpx.AsyncClient(auth=BearerAuth(src), timeout=10) as client:
            sent = src.token()
            answer = await client.post(unauthorized.url, content=b"payload")
            assert answer.status_code == 401
            (auth1, _), (auth2, _) = unauthorized.seen
            assert auth1 == f"Bearer {sent}"
            assert auth2 == f"Bearer {src.token()}" != auth1

            unauthorized.seen.clear()
            current = src.token()
            answer = await client.post(unauthorized.url, content=streamed())
            assert answer.status_code == 401
            assert unauthorized.seen == [(f"Bearer {current}", b"payload")]

    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        asyncio.run(scenario(src))


class _BlockingSource:
    """A stand-in source whose token() blocks until the event loop has run another task."""

    def __init__(self) -> None:
        self.loop_ran = threading.Event()

    def token(self, *, timeout: float = 10.0) -> str:
        assert self.loop_ran.wait(20), "the event loop was blocked while token() ran"
        return "token"

    def refresh(self, stale: str, *, timeout: float = 10.0) -> str:
        raise AssertionError("no 401 here")


def test_async_flow_does_not_block_the_event_loop():
    source = _BlockingSource()

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=request.headers["Authorization"])

    async def scenario() -> None:
        auth = BearerAuth(source)
        async with httpx.AsyncClient(auth=auth, transport=httpx.MockTransport(answer)) as client:
            request = asyncio.create_task(client.get("http://example.invalid/"))
            await asyncio.sleep(0)  # the request starts, and asks for its token
            source.loop_ran.set()  # runs only while the loop is free
            assert (await request).text == "Bearer token"

    asyncio.run(scenario())
