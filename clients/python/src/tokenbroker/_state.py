"""What a TokenSource holds (the newest token, or why it has none, and whether its watch
stream is up) and the rules of clients/README.md for changing it. The watch thread and
every caller share it, guarded by one threading.Condition."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ._connection import WatchCall
from ._errors import TokenError
from ._timing import is_expired
from .v1 import token_service_pb2 as pb

# The events that empty a source, and the code its TokenError then carries.
_EMPTYING = {
    pb.TOKEN_EVENT_REASON_REVOKED: "REVOKED",
    pb.TOKEN_EVENT_REASON_UNAVAILABLE: "UNAVAILABLE",
}


@dataclass(frozen=True)
class Held:
    """A token as a source holds it."""

    access_token: str = field(repr=False)
    #: Unix seconds; ``None`` for a long-lived token.
    expires_at: float | None
    generation: int

    @classmethod
    def from_message(cls, token: pb.Token) -> Held:
        expires_at = None
        if token.HasField("expires_at"):
            expires_at = token.expires_at.seconds + token.expires_at.nanos / 1e9
        return cls(token.access_token, expires_at, token.generation)

    def expired(self) -> bool:
        """Whether it counts as expired now (5 s before its ``expires_at``)."""
        return is_expired(self.expires_at, time.time())


class State:
    """The shared state of one source. Every method takes the lock itself."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: Held | None = None
        # (code, message) of the REVOKED or UNAVAILABLE event that emptied the source.
        self._emptied: tuple[str, str] | None = None
        # The last stream attempt failed: no first token is on its way.
        self._stream_down = False
        self._closed = False
        self._call: WatchCall | None = None

    # What callers ask.

    def valid_token(self, deadline: float) -> str | None:
        """The held token if valid; with none held yet, waits for the stream's first one
        until ``deadline`` (``time.monotonic()``). ``None``: the caller must ask the broker
        itself (the held token expired, the stream is down, or the deadline passed).

        Raises TokenError when the source is closed or emptied by an event.
        """
        with self._cond:
            while True:
                if self._closed:
                    raise TokenError("CANCELLED", "the token source is closed")
                if self._emptied is not None:
                    raise TokenError(*self._emptied)
                if self._held is not None:
                    return None if self._held.expired() else self._held.access_token
                remaining = deadline - time.monotonic()
                if self._stream_down or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def check_open(self) -> None:
        """Raises TokenError once the source is closed."""
        with self._cond:
            if self._closed:
                raise TokenError("CANCELLED", "the token source is closed")

    def offer(self, held: Held, *, replace: bool = False) -> None:
        """Holds ``held`` if it is newer than the token held: always with ``replace`` (a
        stream's first message, the broker's current state); otherwise when nothing valid
        is held or its generation is higher, so that a late answer never replaces a newer
        token. A new token ends an emptied state."""
        with self._cond:
            current = self._held
            if (
                replace
                or current is None
                or current.expired()
                or held.generation > current.generation
            ):
                self._held = held
                self._emptied = None
                self._cond.notify_all()

    # What the watch thread tells.

    def on_message(self, message: pb.WatchTokensResponse, *, first: bool) -> None:
        """Applies one WatchTokens message; ``first``: the first of its stream."""
        code = _EMPTYING.get(message.reason)
        with self._cond:  # reentrant: offer() takes it again
            self._stream_down = False
            if code is not None:
                self._held = None
                self._emptied = (code, message.detail)
                self._cond.notify_all()
            elif message.HasField("token"):
                replace = first or message.reason == pb.TOKEN_EVENT_REASON_INITIAL
                self.offer(Held.from_message(message.token), replace=replace)

    def stream_opened(self, call: WatchCall) -> bool:
        """Records the stream now open, so that :meth:`close` can end it. False (and the
        call cancelled) once closed."""
        with self._cond:
            if self._closed:
                call.cancel()
                return False
            self._call = call
            self._stream_down = False
            return True

    def stream_failed(self, wait: float) -> bool:
        """Records that the stream ended, then waits ``wait`` seconds before the next
        attempt, or until closed. False once closed."""
        with self._cond:
            self._call = None
            self._stream_down = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._closed, wait)
            return not self._closed

    def close(self) -> WatchCall | None:
        """Marks the source closed and wakes everyone; returns the stream to end."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            call, self._call = self._call, None
            return call

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed
