"""Connection: one gRPC channel to the broker and the credentials sent on it, shared by
every TokenSource made from it (one HTTP/2 connection for all their streams)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import Protocol

import grpc
from google.protobuf.duration_pb2 import Duration

from ._errors import TokenError
from .v1 import token_service_pb2 as pb
from .v1 import token_service_pb2_grpc as rpc


class WatchCall(Protocol):
    """A WatchTokens call in progress: its messages, and a way to end it."""

    def __iter__(self) -> Iterator[pb.WatchTokensResponse]: ...

    def cancel(self) -> bool: ...


class Connection:
    """A channel to the broker at ``target``: ``"host:port"`` or ``"unix:///path/to.sock"``.

    TLS is used when ``root_certificates`` (PEM bytes of the CA to trust the broker with)
    or a client certificate (``certificate_chain`` and ``private_key``, PEM bytes, for
    mutual TLS) is given; with a client certificate alone the system's CAs are trusted.
    ``api_key`` is sent as ``authorization: Bearer <key>`` on every call.

    Pass one Connection to several :class:`~tokenbroker.TokenSource` objects to share it;
    they do not close it. Close it with :meth:`close` or a ``with`` block (it also closes
    when garbage collected).
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        self._target = target
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ()
        )
        if root_certificates is not None or certificate_chain is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
            )
            self._channel = grpc.secure_channel(target, credentials)
            self._tls = True
        else:
            self._channel = grpc.insecure_channel(target)
            self._tls = False
        self._stub = rpc.TokenServiceStub(self._channel)
        self._close = weakref.finalize(self, self._channel.close)

    @property
    def target(self) -> str:
        """The broker's address, as given."""
        return self._target

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return not self._close.alive

    def close(self) -> None:
        """Closes the channel: calls and streams on it end, and sources using it raise
        TokenError ``CANCELLED``. Idempotent."""
        self._close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        # Never the API key itself.
        return (
            f"Connection({self._target!r}, tls={self._tls}, "
            f"api_key={'set' if self._metadata else 'none'})"
        )

    # The calls a TokenSource makes; each raises grpc.RpcError on failure, and TokenError
    # CANCELLED once the connection is closed.

    def _check_open(self) -> None:
        if self.closed:
            raise TokenError("CANCELLED", "the connection to the broker is closed")

    def _get_token(
        self, org: str, user_id: str, *, min_valid_for: float, timeout: float
    ) -> pb.Token:
        """GetUserToken for a user, GetOrgToken for the org (``user_id`` empty)."""
        self._check_open()
        valid_for = Duration()
        valid_for.FromNanoseconds(int(min_valid_for * 1e9))
        if user_id:
            user = self._stub.GetUserToken(
                pb.GetUserTokenRequest(org=org, user_id=user_id, min_valid_for=valid_for),
                timeout=timeout,
                metadata=self._metadata,
            )
            return user.token
        org_token = self._stub.GetOrgToken(
            pb.GetOrgTokenRequest(org=org, min_valid_for=valid_for),
            timeout=timeout,
            metadata=self._metadata,
        )
        return org_token.token

    def _refresh(self, org: str, user_id: str, stale: str, *, timeout: float) -> pb.Token:
        """Refresh with ``stale`` as the token seen rejected."""
        self._check_open()
        response = self._stub.Refresh(
            pb.RefreshRequest(org=org, user_id=user_id, stale_access_token=stale),
            timeout=timeout,
            metadata=self._metadata,
        )
        return response.token

    def _watch(self, org: str, user_id: str) -> WatchCall:
        """Opens a WatchTokens stream for one key (no deadline: it lasts until ended)."""
        self._check_open()
        request = pb.WatchTokensRequest(org=org, user_ids=[user_id] if user_id else [])
        return self._stub.WatchTokens(request, metadata=self._metadata)
