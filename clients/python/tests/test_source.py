"""TokenSource against the real broker: following rotations and restarts, emptying on
REVOKED, errors, never an expired token, Unix sockets and shared connections."""

from __future__ import annotations

import time

import pytest

from tokenbroker import Connection, TokenError, TokenSource

from brokers import DEADLINE, eventually


def test_follows_a_forced_rotation(procs, demo):
    _, broker = demo
    raw = procs.raw(broker.target)
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        t1 = src.token()
        assert t1 == raw.user_token("EMP-00001").access_token
        t2 = raw.refresh(t1, user_id="EMP-00001").access_token
        assert t2 != t1
        eventually(lambda: src.token() == t2, "the source holds the forced token")


def test_survives_a_broker_restart(procs, demo):
    _, broker = demo
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        t1 = src.token()
        broker.stop()
        # Still valid: held, with no broker to ask.
        assert src.token() == t1
        assert src.token() == t1
        broker.restart()
        new = eventually(
            lambda: (t := src.token()) != t1 and t, "the source follows the new broker"
        )
        assert new == procs.raw(broker.target).user_token("EMP-00001").access_token


def test_revoked_event_empties_the_source(procs):
    sandbox = procs.sandbox(token_lifetime="10s")
    broker = procs.broker(sandbox)
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        src.token()
        sandbox.remove_user("EMP-00001")

        def revoked() -> TokenError | None:
            try:
                src.token()
            except TokenError as e:
                # Before the event, the source's own calls may fail otherwise.
                return e if e.code == "REVOKED" else None
            return None

        error = eventually(revoked, "token() raises REVOKED", deadline=30)
        assert error.message
        with pytest.raises(TokenError) as again:
            src.token()
        assert again.value.code == "REVOKED"


def test_unknown_user_is_not_found_with_the_brokers_message(procs, demo):
    _, broker = demo
    with pytest.raises(Exception) as raw_error:
        procs.raw(broker.target).user_token("no-such-user")
    with TokenSource(broker.target, org="demo", user_id="no-such-user") as src:
        with pytest.raises(TokenError) as error:
            src.token()
    assert error.value.code == "NOT_FOUND"
    assert error.value.message == raw_error.value.details()
    assert "no-such-user" in error.value.message


def test_never_returns_a_token_within_5_s_of_its_expiry(procs):
    sandbox = procs.sandbox(token_lifetime="16s")
    broker = procs.broker(sandbox)
    raw = procs.raw(broker.target)
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        held = src.token()
        token = raw.user_token("EMP-00001")
        assert token.access_token == held
        expires_at = token.expires_at.seconds + token.expires_at.nanos / 1e9
        broker.stop()

        returned = 0
        end = time.monotonic() + 30
        while True:
            asked_at = time.time()
            try:
                assert src.token(timeout=DEADLINE) == held
            except TokenError as e:
                error = e
                break
            # Returned only while the check (after asked_at) was before the margin.
            assert asked_at < expires_at - 5
            returned += 1
            assert time.monotonic() < end, "token() kept returning the held token"
            time.sleep(0.1)
        assert returned > 0, "the held token was valid when the broker stopped"
        # It asked the broker itself (down), rather than hand out the held token.
        assert error.code == "UNAVAILABLE"
        assert time.time() >= expires_at - 5


def test_unix_socket_target(procs, tmp_path):
    sandbox = procs.sandbox()
    target = f"unix://{tmp_path}/broker.sock"
    broker = procs.broker(sandbox, listen=target)
    assert broker.target == target
    with TokenSource(target, org="demo", user_id="EMP-00001") as src:
        assert src.token() == procs.raw(target).user_token("EMP-00001").access_token


def test_sources_on_one_connection_share_it_and_follow_their_own_key(procs, demo):
    _, broker = demo
    raw = procs.raw(broker.target)
    with Connection(broker.target) as conn:
        org = TokenSource(conn, org="demo")
        one = TokenSource(conn, org="demo", user_id="EMP-00001")
        two = TokenSource(conn, org="demo", user_id="EMP-00002")
        assert org.connection is conn and one.connection is conn and two.connection is conn
        assert org.token() == raw.org_token().access_token
        t1 = one.token()
        assert t1 == raw.user_token("EMP-00001").access_token
        t2 = two.token()
        assert t2 == raw.user_token("EMP-00002").access_token
        assert len({org.token(), t1, t2}) == 3

        rotated = raw.refresh(t2, user_id="EMP-00002").access_token
        eventually(lambda: two.token() == rotated, "EMP-00002's source follows its rotation")
        assert one.token() == t1 == raw.user_token("EMP-00001").access_token

        # Closing a source leaves the shared connection open for the others.
        one.close()
        with pytest.raises(TokenError) as closed:
            one.token()
        assert closed.value.code == "CANCELLED"
        with TokenSource(conn, org="demo", user_id="EMP-00003") as three:
            assert three.token() == raw.user_token("EMP-00003").access_token
        assert two.token() == rotated
        org.close()
        two.close()


def test_a_connection_and_credentials_do_not_mix(demo):
    _, broker = demo
    with Connection(broker.target) as conn:
        with pytest.raises(ValueError):
            TokenSource(conn, api_key="key")
