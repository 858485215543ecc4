"""Credentials the broker checks: an API key sent on every call of a source."""

from __future__ import annotations

import secrets

import pytest

from tokenbroker import Connection, TokenError, TokenSource

from brokers import api_key_config
from certs import have_openssl, make_certs, tls_config


def test_api_key(procs):
    key = secrets.token_urlsafe(24)
    sandbox = procs.sandbox()
    broker = procs.broker(sandbox, extra=api_key_config(key))
    raw = procs.raw(broker.target, api_key=key)

    with TokenSource(broker.target, org="demo", user_id="EMP-00001", api_key=key) as src:
        t1 = src.token()
        assert t1 == raw.user_token("EMP-00001").access_token
        # Refresh and the stream carry the key too.
        t2 = src.refresh(t1)
        assert t2 != t1 and src.token() == t2

    for wrong in (None, "not-the-key"):
        with TokenSource(broker.target, org="demo", user_id="EMP-00001", api_key=wrong) as src:
            with pytest.raises(TokenError) as error:
                src.token()
            assert error.value.code == "UNAUTHENTICATED"
            with pytest.raises(TokenError) as error:
                src.refresh("stale")
            assert error.value.code == "UNAUTHENTICATED"


def test_the_api_key_stays_out_of_reprs_and_errors(procs):
    key = secrets.token_urlsafe(24)
    sandbox = procs.sandbox()
    broker = procs.broker(sandbox, extra=api_key_config(key))
    conn = Connection(broker.target, api_key=key)
    with TokenSource(conn, org="demo", user_id="EMP-00001") as src:
        token = src.token()
        assert key not in repr(conn) and key not in repr(src)
        assert token not in repr(src)
    conn.close()
    with TokenSource(broker.target, org="demo", user_id="no-such-user", api_key=key) as src:
        with pytest.raises(TokenError) as error:
            src.token()
        assert key not in str(error.value) and key not in repr(error.value)


@pytest.mark.skipif(not have_openssl(), reason="needs openssl to make certificates")
def test_tls_with_a_client_certificate(procs, tmp_path):
    certs = make_certs(tmp_path)
    sandbox = procs.sandbox()
    broker = procs.broker(sandbox, extra=tls_config(certs))
    ca = certs.ca.read_bytes()
    chain, key = certs.client_cert.read_bytes(), certs.client_key.read_bytes()

    conn = Connection(broker.target, root_certificates=ca, certificate_chain=chain, private_key=key)
    with conn, TokenSource(conn, org="demo", user_id="EMP-00001") as src:
        t1 = src.token()
        assert src.refresh(t1) != t1

    # Trusting the broker is not enough: the caller is known by its certificate.
    with TokenSource(broker.target, org="demo", user_id="EMP-00001", root_certificates=ca) as src:
        with pytest.raises(TokenError) as error:
            src.token()
        assert error.value.code == "UNAUTHENTICATED"

    # Plain text to a TLS port gets nowhere.
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        with pytest.raises(TokenError) as error:
            src.token(timeout=5)
        assert error.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
