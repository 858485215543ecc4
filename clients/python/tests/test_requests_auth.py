"""tokenbroker.requests.BearerAuth: a 401 costs one Refresh and one retry; a second 401
and a body that cannot be sent again are the caller's."""

from __future__ import annotations

import requests

from tokenbroker import TokenSource
from tokenbroker.requests import BearerAuth


def test_a_revoked_token_costs_one_refresh_and_one_retry(demo):
    sandbox, broker = demo
    me = sandbox.url + "/api/v1/expense/me"
    with (
        TokenSource(broker.target, org="demo", user_id="EMP-00001") as src,
        requests.Session() as session,
    ):
        session.auth = BearerAuth(src)
        first = session.get(me, timeout=10)
        assert first.status_code == 200
        assert first.json()["externalSourceId"] == "EMP-00001"

        sent = src.token()
        sandbox.revoke(sent)
        before = sandbox.stats()
        answer = session.get(me, timeout=10)
        after = sandbox.stats()

        assert answer.status_code == 200
        assert answer.json()["externalSourceId"] == "EMP-00001"
        assert [r.status_code for r in answer.history] == [401]
        assert after["refresh_token"] - before["refresh_token"] == 1
        assert after["api"] - before["api"] == 2
        assert src.token() != sent
        assert answer.request.headers["Authorization"] == f"Bearer {src.token()}"


def test_a_second_401_is_returned_as_it_is(demo, unauthorized):
    _, broker = demo
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        sent = src.token()
        answer = requests.post(unauthorized.url, data=b"payload", auth=BearerAuth(src), timeout=10)
        assert answer.status_code == 401
        assert len(unauthorized.seen) == 2
        (auth1, body1), (auth2, body2) = unauthorized.seen
        assert auth1 == f"Bearer {sent}"
        assert auth2 == f"Bearer {src.token()}" != auth1
        assert body1 == body2 == b"payload"


def test_a_streamed_body_is_not_sent_again(demo, unauthorized):
    _, broker = demo
    with TokenSource(broker.target, org="demo", user_id="EMP-00001") as src:
        sent = src.token()
        answer = requests.post(
            unauthorized.url, data=iter([b"pay", b"load"]), auth=BearerAuth(src), timeout=10
        )
        assert answer.status_code == 401
        assert unauthorized.seen == [(f"Bearer {sent}", b"payload")]
        assert src.token() == sent
