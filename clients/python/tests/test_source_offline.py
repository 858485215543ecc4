"""TokenSource with a stand-in connection, for what the real broker cannot show on cue:
a refreshed or fetched token is held, a stream that fails sends token() to the broker at
once, and an unanswered first token ends at the timeout."""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tokenbroker import Connection, TokenError, TokenSource
from tokenbroker.v1 import token_service_pb2 as pb


def a_token(access_token: str, generation: int) -> pb.Token:
    token = pb.Token(access_token=access_token, generation=generation)
    token.expires_at.FromSeconds(int(time.time()) + 3600)
    return token


class FakeStream:
    """A WatchTokens call that yields what is put in, until cancelled."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.cancelled = False
        self.messages: queue.Queue[pb.WatchTokensResponse | None] = queue.Queue()

    def __iter__(self) -> Iterator[pb.WatchTokensResponse]:
        if self.fail:
            raise grpc.RpcError()
        while (message := self.messages.get()) is not None:
            yield message
        raise grpc.RpcError()

    def cancel(self) -> bool:
        self.cancelled = True
        self.messages.put(None)
        return True


class FakeConnection(Connection):
    """A connection whose calls are answered by the test; counts them."""

    def __init__(self, *, stream_fails: bool = False) -> None:
        super().__init__("127.0.0.1:1")  # never dialled: every call is overridden
        self.stream_fails = stream_fails
        self.streams: list[FakeStream] = []
        self.opened = threading.Event()
        self.get_calls = 0
        self.next_generation = 1

    def _get_token(
        self, org: str, user_id: str, *, min_valid_for: float, timeout: float
    ) -> pb.Token:
        self._check_open()
        self.get_calls += 1
        self.next_generation += 1
        return a_token(f"fetched-{self.next_generation}", self.next_generation)

    def _refresh(self, org: str, user_id: str, stale: str, *, timeout: float) -> pb.Token:
        self._check_open()
        self.next_generation += 1
        return a_token(f"refreshed-{self.next_generation}", self.next_generation)

    def _watch(self, org: str, user_id: str) -> FakeStream:
        self._check_open()
        stream = FakeStream(self.stream_fails)
        self.streams.append(stream)
        self.opened.set()
        return stream


def test_a_refreshed_token_is_held_before_the_stream_says_so():
    conn = FakeConnection()
    with TokenSource(conn, user_id="u") as src:
        assert conn.opened.wait(10)
        conn.streams[0].messages.put(
            pb.WatchTokensResponse(reason=pb.TOKEN_EVENT_REASON_INITIAL, token=a_token("t1", 1))
        )
        assert src.token() == "t1"
        fresh = src.refresh("t1")
        assert fresh == "refreshed-2"
        assert src.token() == fresh
        assert conn.get_calls == 0


def test_a_failed_stream_sends_token_to_the_broker_and_the_answer_is_held():
    conn = FakeConnection(stream_fails=True)
    with TokenSource(conn, user_id="u") as src:
        assert src.token(timeout=30) == "fetched-2"
        assert src.token() == "fetched-2"
        assert conn.get_calls == 1


def test_no_first_token_within_the_timeout_is_deadline_exceeded():
    conn = FakeConnection()
    with TokenSource(conn, user_id="u") as src:
        with pytest.raises(TokenError) as error:
            src.token(timeout=0.2)
        assert error.value.code == "DEADLINE_EXCEEDED"


def test_close_ends_the_stream_and_leaves_a_shared_connection_open():
    conn = FakeConnection()
    src = TokenSource(conn, user_id="u")
    assert conn.opened.wait(10)
    src.close()
    src.close()
    with pytest.raises(TokenError) as error:
        src.token()
    assert error.value.code == "CANCELLED"
    with pytest.raises(TokenError):
        src.refresh("t")
    # The stream was ended, and no other opened after it.
    assert conn.streams[0].cancelled
    assert len(conn.streams) == 1
    conn.close()


def test_a_closed_shared_connection_ends_its_sources():
    conn = FakeConnection()
    with TokenSource(conn, user_id="u") as src:
        assert conn.opened.wait(10)
        conn.close()
        conn.streams[0].cancel()  # what closing the channel does to a real stream
        with pytest.raises(TokenError) as error:
            src.token(timeout=30)
        assert error.value.code == "CANCELLED"


def test_a_dropped_source_closes_itself():
    conn = FakeConnection()
    src = TokenSource(conn, user_id="u")
    assert conn.opened.wait(10)
    del src
    gc.collect()
    assert conn.streams[0].cancelled
    conn.close()
