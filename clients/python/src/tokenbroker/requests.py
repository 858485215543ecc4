"""Bearer auth for requests: the current token of a TokenSource on every request, and on a
401 one Refresh and one retry (clients/README.md, "The HTTP helpers").

    session.auth = BearerAuth(src)

Needs the ``requests`` extra: ``pip install 'tokenbroker[requests]'``.
"""

from __future__ import annotations

from typing import Any

import requests
import requests.auth

from ._source import TokenSource


class BearerAuth(requests.auth.AuthBase):
    """Sends ``Authorization: Bearer <token>`` with ``source``'s current token.

    When the answer is 401 and the body can be sent again (none, bytes or str; not a file
    or a generator), it calls ``source.refresh`` with the token sent and sends the request
    once more with the new one; the first answer is in the response's ``history``. A
    second 401 is returned as it is. TokenError from the source propagates.
    """

    def __init__(self, source: TokenSource) -> None:
        self._source = source

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self._source.token()
        r.headers["Authorization"] = f"Bearer {token}"
        if _replayable(r):
            # What r.register_hook does (which the stubs leave untyped).
            r.hooks["response"].append(_RetryOn401(self._source, token))
        return r

    def __repr__(self) -> str:
        return f"BearerAuth({self._source!r})"


class _RetryOn401:
    """The response hook of one request: a 401 answer costs one Refresh and one retry, as
    requests' HTTPDigestAuth resends its challenge answer."""

    def __init__(self, source: TokenSource, sent: str) -> None:
        self._source = source
        self._sent = sent

    def __call__(self, r: requests.Response, **kwargs: Any) -> requests.Response:
        if r.status_code != 401 or r.connection is None:
            return r
        fresh = self._source.refresh(self._sent)
        # Read and release the first answer, so that its connection can be used again.
        _ = r.content
        r.close()
        retry = r.request.copy()
        retry.headers["Authorization"] = f"Bearer {fresh}"
        # The copy carries the hooks; the adapter does not run them, so this is the only
        # retry.
        second: requests.Response = r.connection.send(retry, **kwargs)
        second.history.append(r)
        second.request = retry
        return second


def _replayable(r: requests.PreparedRequest) -> bool:
    """Whether the body can be sent a second time."""
    return r.body is None or isinstance(r.body, (bytes, str))
