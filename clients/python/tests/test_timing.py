"""The pure rules: reconnect backoff and the 5 s expiry margin."""

from __future__ import annotations

import random

from tokenbroker._timing import BACKOFF_INITIAL, BACKOFF_MAX, EXPIRY_MARGIN, Backoff, is_expired


def test_backoff_doubles_from_100_ms_to_30_s_drawing_between_half_and_all():
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high

    backoff = Backoff(uniform)
    waits = [backoff.next() for _ in range(12)]
    assert waits[:4] == [0.1, 0.2, 0.4, 0.8]
    assert waits[8] == 25.6
    assert waits[9:] == [30.0, 30.0, 30.0]
    assert all(low == high / 2 for low, high in drawn)


def test_backoff_reset_starts_again_at_100_ms():
    backoff = Backoff(lambda low, high: high)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.next() == BACKOFF_INITIAL


def test_backoff_jitter_stays_within_its_bounds():
    backoff = Backoff(random.Random(7).uniform)
    ceiling = BACKOFF_INITIAL
    for _ in range(20):
        assert ceiling / 2 <= backoff.next() <= ceiling
        ceiling = min(ceiling * 2, BACKOFF_MAX)


def test_a_token_expires_5_s_before_its_expiry():
    assert EXPIRY_MARGIN == 5.0
    assert not is_expired(1000.0, now=994.9)
    assert is_expired(1000.0, now=995.0)
    assert is_expired(1000.0, now=1001.0)


def test_a_long_lived_token_never_expires():
    assert not is_expired(None, now=1e12)
