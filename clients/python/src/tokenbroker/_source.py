"""TokenSource: the current token of one key (the org, or one user), kept by a WatchTokens
stream in a daemon thread, as clients/README.md describes."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from types import TracebackType

import grpc

from ._connection import Connection
from ._errors import TokenError
from ._state import Held, State
from ._timing import EXPIRY_MARGIN, Backoff

_log = logging.getLogger("tokenbroker")

# What the source's own Get*Token calls ask the broker to leave of a token: the expiry
# margin and a second for the answer's way back, so that what it hands out is valid here.
_MIN_VALID_FOR = EXPIRY_MARGIN + 1.0


class TokenSource:
    """The current access token for ``org`` (``None``: the broker's only org) and
    ``user_id`` (a person id or ExternalSourceID; ``None``: the org token).

    ``conn_or_target`` is a :class:`Connection`, shared and left open by the source, or a
    target (``"host:port"``, ``"unix:///path"``) for a connection of the source's own, made
    with the credential keywords (see :class:`Connection`).

    A daemon thread follows the key's WatchTokens stream from construction on, reconnecting
    with backoff. :meth:`token` answers from what it holds. Close the source with
    :meth:`close` or a ``with`` block; it also closes when garbage collected.
    """

    def __init__(
        self,
        conn_or_target: Connection | str,
        *,
        org: str | None = None,
        user_id: str | None = None,
        api_key: str | None = None,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
    ) -> None:
        if isinstance(conn_or_target, Connection):
            credentials = (api_key, root_certificates, certificate_chain, private_key)
            if any(c is not None for c in credentials):
                raise ValueError("credentials belong to the Connection when one is passed")
            self._conn = conn_or_target
            owned = None
        else:
            self._conn = owned = Connection(
                conn_or_target,
                api_key=api_key,
                root_certificates=root_certificates,
                certificate_chain=certificate_chain,
                private_key=private_key,
            )
        self._org = org or ""
        self._user_id = user_id or ""
        self._state = State()
        # The thread gets the state, not the source, so that a dropped source is collected
        # (and closed by the finalizer).
        thread = threading.Thread(
            target=_follow,
            args=(self._state, self._conn, self._org, self._user_id),
            name=f"tokenbroker-watch {self._org}/{self._user_id}",
            daemon=True,
        )
        thread.start()
        self._close = weakref.finalize(self, _shut_down, self._state, owned, thread)

    @property
    def connection(self) -> Connection:
        """The connection the source uses (its own, or the one it was given)."""
        return self._conn

    @property
    def org(self) -> str | None:
        """The org, as given (``None``: the broker's only org)."""
        return self._org or None

    @property
    def user_id(self) -> str | None:
        """The user whose token the source follows (``None``: the org token)."""
        return self._user_id or None

    def token(self, *, timeout: float = 10.0) -> str:
        """The current access token, never one within 5 s of its expiry.

        Answers at once from the held token while it is valid. Before the first one has
        arrived it waits for it up to ``timeout`` seconds; when the stream has failed or
        the held token has expired, it calls GetOrgToken / GetUserToken itself within what
        is left of ``timeout``.

        Raises TokenError with the broker's status (``NOT_FOUND``, ``UNAVAILABLE``, ...),
        ``DEADLINE_EXCEEDED`` when ``timeout`` passed first, or the reason of the event
        that emptied the source (``REVOKED``, ``UNAVAILABLE``).
        """
        deadline = time.monotonic() + timeout
        held = self._state.valid_token(deadline)
        if held is not None:
            return held
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TokenError("DEADLINE_EXCEEDED", f"no token from the broker within {timeout:g} s")
        try:
            message = self._conn._get_token(
                self._org, self._user_id, min_valid_for=_MIN_VALID_FOR, timeout=remaining
            )
        except grpc.RpcError as e:
            raise TokenError.from_rpc_error(e) from e
        fetched = Held.from_message(message)
        self._state.offer(fetched)
        if fetched.expired():
            raise TokenError("UNAVAILABLE", "the broker answered with a token about to expire")
        return fetched.access_token

    def refresh(self, stale: str, *, timeout: float = 10.0) -> str:
        """Asks the broker to replace ``stale``, a token the platform rejected, and returns
        the new one (also held from now on). Callers that saw the same token rejected cost
        one rotation: the broker answers the others with the token that replaced it.

        Raises TokenError with the broker's status.
        """
        self._state.check_open()
        try:
            message = self._conn._refresh(self._org, self._user_id, stale, timeout=timeout)
        except grpc.RpcError as e:
            raise TokenError.from_rpc_error(e) from e
        self._state.offer(Held.from_message(message))
        return message.access_token

    def close(self) -> None:
        """Ends the watch stream, and closes the source's own connection (not a shared
        one). Idempotent; :meth:`token` then raises TokenError ``CANCELLED``."""
        self._close()

    def __enter__(self) -> TokenSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TokenSource({self._conn.target!r}, org={self.org!r}, user_id={self.user_id!r})"


def _follow(state: State, conn: Connection, org: str, user_id: str) -> None:
    """The watch thread: one WatchTokens stream at a time, reconnecting with backoff until
    the source closes."""
    key = f"{org or '(default org)'}/{user_id or '(org token)'}"
    backoff = Backoff()
    while True:
        first = True
        try:
            call = conn._watch(org, user_id)
            if not state.stream_opened(call):
                return
            for message in call:
                backoff.reset()
                state.on_message(message, first=first)
                first = False
            outcome = "ended"
        except grpc.RpcError as e:
            outcome = f"failed: {TokenError.from_rpc_error(e)}"
        except TokenError as e:
            outcome = f"failed: {e}"
        except Exception:  # a bug must not end the thread: the source would never recover
            _log.exception("tokenbroker: watching %s failed", key)
            outcome = "failed"
        if state.closed:
            return
        if conn.closed:  # a shared connection closed under the source: for good
            state.stream_failed(0)
            return
        wait = backoff.next()
        _log.debug("tokenbroker: the stream for %s %s; reconnecting in %.2f s", key, outcome, wait)
        if not state.stream_failed(wait):
            return


def _shut_down(state: State, owned: Connection | None, thread: threading.Thread) -> None:
    """Closes a source: the finalizer behind close(), also run when it is collected."""
    call = state.close()
    if call is not None:
        call.cancel()
    if owned is not None:
        owned.close()
    if thread is not threading.current_thread():
        thread.join(timeout=5.0)
