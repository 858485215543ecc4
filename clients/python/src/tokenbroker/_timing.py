"""The two pure rules of clients/README.md that decide when: how long to wait before a
watch stream reconnects, and when a held token counts as expired. Kept apart from the
threads and sockets so that their numbers are tested on their own."""

from __future__ import annotations

import random
from collections.abc import Callable

#: A token counts as expired this many seconds before its ``expires_at``, so that it does
#: not die on its way to the platform.
EXPIRY_MARGIN = 5.0

#: The first reconnect wait, in seconds, before jitter.
BACKOFF_INITIAL = 0.1

#: The longest reconnect wait, in seconds, before jitter.
BACKOFF_MAX = 30.0


def is_expired(expires_at: float | None, now: float, margin: float = EXPIRY_MARGIN) -> bool:
    """Whether a token expiring at ``expires_at`` (Unix seconds; ``None`` for a long-lived
    token, which never expires) counts as expired at ``now``: from ``margin`` seconds before
    its expiry on."""
    return expires_at is not None and now >= expires_at - margin


class Backoff:
    """Jittered exponential backoff: 100 ms doubling to 30 s, each wait drawn between half
    and all of that, back to 100 ms after :meth:`reset`.

    ``uniform(a, b)`` draws the jittered wait; tests pass their own.
    """

    def __init__(self, uniform: Callable[[float, float], float] = random.uniform) -> None:
        self._uniform = uniform
        self._ceiling = BACKOFF_INITIAL

    def next(self) -> float:
        """The wait before the next attempt, in seconds; doubles the one after it."""
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, BACKOFF_MAX)
        return self._uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """Starts again from 100 ms: called once a stream has delivered a message."""
        self._ceiling = BACKOFF_INITIAL
