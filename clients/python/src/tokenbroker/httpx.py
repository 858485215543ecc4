"""Bearer auth for httpx, sync and async clients alike: the current token of a TokenSource
on every request, and on a 401 one Refresh and one retry (clients/README.md, "The HTTP
helpers").

    client = httpx.Client(auth=BearerAuth(src))     # or httpx.AsyncClient

Needs the ``httpx`` extra: ``pip install 'tokenbroker[httpx]'``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator

import anyio.to_thread
import httpx

from ._source import TokenSource


class BearerAuth(httpx.Auth):
    """Sends ``Authorization: Bearer <token>`` with ``source``'s current token.

    When the answer is 401 and the body can be sent again (none, bytes, str, JSON or form
    data; not a stream or a multipart upload), it calls ``source.refresh`` with the token
    sent and sends the request once more with the new one; the first answer is in the
    response's ``history``. A second 401 is returned as it is. TokenError from the source
    propagates.

    In an async client the source's blocking calls run in a worker thread, never on the
    event loop.
    """

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._source.token()
        response = yield _with_token(request, token)
        if response.status_code == 401 and _replayable(request):
            yield _with_token(request, self._source.refresh(token))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await anyio.to_thread.run_sync(self._source.token)
        response = yield _with_token(request, token)
        if response.status_code == 401 and _replayable(request):
            fresh = await anyio.to_thread.run_sync(self._source.refresh, token)
            yield _with_token(request, fresh)

    def __repr__(self) -> str:
        return f"BearerAuth({self._source!r})"


def _with_token(request: httpx.Request, token: str) -> httpx.Request:
    request.headers["Authorization"] = f"Bearer {token}"
    return request


def _replayable(request: httpx.Request) -> bool:
    """Whether the body can be sent a second time: httpx holds it whole, as a ByteStream."""
    return isinstance(request.stream, httpx.ByteStream)
