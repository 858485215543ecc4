"""What a source holds and when it changes, without a broker: INITIAL replaces, a late
answer never replaces a newer token, REVOKED empties until the next token."""

from __future__ import annotations

import time

import pytest

from tokenbroker import TokenError
from tokenbroker._state import Held, State
from tokenbroker.v1 import token_service_pb2 as pb


def message(
    reason: int, token: str | None = None, generation: int = 1, detail: str = ""
) -> pb.WatchTokensResponse:
    m = pb.WatchTokensResponse(reason=reason, detail=detail)
    if token is not None:
        m.token.access_token = token
        m.token.generation = generation
        m.token.expires_at.FromSeconds(int(time.time()) + 3600)
    return m


def held(state: State) -> str | None:
    return state.valid_token(time.monotonic())


def test_a_later_generation_replaces_an_earlier_one_but_not_the_other_way():
    state = State()
    state.on_message(message(pb.TOKEN_EVENT_REASON_INITIAL, "t2", 2), first=True)
    state.offer(Held("t1", time.time() + 3600, 1))
    assert held(state) == "t2"
    state.on_message(message(pb.TOKEN_EVENT_REASON_FORCED, "t3", 3), first=False)
    assert held(state) == "t3"


def test_a_new_streams_initial_replaces_whatever_generation():
    state = State()
    state.on_message(message(pb.TOKEN_EVENT_REASON_INITIAL, "old", 7), first=True)
    # A restarted broker starts counting again.
    state.on_message(message(pb.TOKEN_EVENT_REASON_INITIAL, "new", 1), first=True)
    assert held(state) == "new"


def test_an_expired_token_is_replaced_by_any_and_not_handed_out():
    state = State()
    state.offer(Held("expired", time.time() + 4, 9))
    assert held(state) is None
    state.offer(Held("fresh", time.time() + 3600, 1))
    assert held(state) == "fresh"


def test_revoked_empties_until_the_next_token():
    state = State()
    state.on_message(message(pb.TOKEN_EVENT_REASON_INITIAL, "t1", 1), first=True)
    state.on_message(message(pb.TOKEN_EVENT_REASON_REVOKED, detail="user removed"), first=False)
    with pytest.raises(TokenError) as error:
        held(state)
    assert (error.value.code, error.value.message) == ("REVOKED", "user removed")
    state.on_message(message(pb.TOKEN_EVENT_REASON_ISSUED, "t2", 2), first=False)
    assert held(state) == "t2"


def test_unavailable_event_empties_too():
    state = State()
    state.on_message(message(pb.TOKEN_EVENT_REASON_INITIAL, "t1", 1), first=True)
    state.on_message(
        message(pb.TOKEN_EVENT_REASON_UNAVAILABLE, detail="platform down"), first=False
    )
    with pytest.raises(TokenError) as error:
        held(state)
    assert error.value.code == "UNAVAILABLE"


def test_no_token_yet_waits_until_the_deadline_or_a_failed_stream():
    state = State()
    assert state.valid_token(time.monotonic() + 0.01) is None

    state.stream_failed(0)
    # Down: at once, however long the deadline.
    assert state.valid_token(time.monotonic() + 3600) is None


def test_the_token_stays_out_of_the_held_repr():
    assert "secret-token" not in repr(Held("secret-token", None, 1))
