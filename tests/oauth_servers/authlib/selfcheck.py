#!/usr/bin/env python3
"""Checks server.py from outside, as the Rust tests use it: starts it with a few configs
(plain, omit_expires_in + JWT access tokens, TLS with a throwaway CA) and checks every
rule the README states. Needs only requirements.txt. `-v` prints each error answer.

    python3 tests/oauth_servers/authlib/selfcheck.py [-v]

Ends with 'N passed, N failed' and exits non-zero on any failure.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, "server.py")
CALLBACK = "http://127.0.0.1/callback"
VERBOSE = "-v" in sys.argv
RESULTS = {"passed": 0, "failed": 0}

JWT_KEY = ECKey.generate_key("P-256", parameters={"kid": "jwt-client-1"})
OTHER_KEY = ECKey.generate_key("P-256", parameters={"kid": "jwt-client-1"})
ODD_SECRET = "p+q/r=s t%"


def config(**overrides):
    scope = "invoices.read invoices.write"
    base = {
        "tls": None,
        "token_lifetime": 3600,
        "omit_expires_in": False,
        "jwt_access_tokens": False,
        "refresh_on_client_credentials": True,
        "clients": [
            {"client_id": "basic-client", "client_secret": "s3cret",
             "auth_method": "client_secret_basic", "scope": scope,
             "grant_types": ["client_credentials", "authorization_code", "refresh_token"]},
            {"client_id": "post-client", "client_secret": "s3cret",
             "auth_method": "client_secret_post", "scope": scope,
             "grant_types": ["client_credentials", "authorization_code", "refresh_token"]},
            {"client_id": "jwt-client", "auth_method": "private_key_jwt", "scope": scope,
             "jwks": {"keys": [JWT_KEY.as_dict(private=False)]},
             "grant_types": ["client_credentials", "authorization_code", "refresh_token"]},
            {"client_id": "public-client", "auth_method": "none", "scope": scope,
             "grant_types": ["authorization_code", "refresh_token"]},
            {"client_id": "cc-only-client", "client_secret": "s3cret",
             "auth_method": "client_secret_basic", "scope": scope,
             "grant_types": ["client_credentials"]},
            {"client_id": "odd-client", "client_secret": ODD_SECRET,
             "auth_method": "client_secret_basic", "scope": scope,
             "grant_types": ["client_credentials"]},
        ],
        "users": ["EMP-00001", "EMP-00002"],
    }
    base.update(overrides)
    return base


class Server:
    def __init__(self, cfg, workdir):
        path = os.path.join(workdir, f"config-{uuid.uuid4().hex[:8]}.json")
        with open(path, "w") as f:
            json.dump(cfg, f)
        started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, SERVER, path], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        line = self.proc.stdout.readline()
        self.startup = time.monotonic() - started
        self.ready_line = line.decode().strip()
        ready = json.loads(line)
        self.issuer, self.port = ready["issuer"], ready["port"]
        self.token_url = f"{self.issuer}/oauth/token"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f"  [{detail}]" if detail and (VERBOSE or not ok) else ""))


def call(url, form=None, basic=None, bearer=None, context=None, raw_basic=None, method=None):
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if basic:
        # RFC 6749 section 2.3.1: each part application/x-www-form-urlencoded, then Base64.
        raw_basic = ":".join(urllib.parse.quote(p, safe="") for p in basic)
    if raw_basic is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(raw_basic.encode()).decode())
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            body = json.loads(body)
        except ValueError:
            body = body.decode(errors="replace")
        return e.code, body, dict(e.headers)


def assertion(server, key=JWT_KEY, client_id="jwt-client", aud=None, alg="ES256", **claims):
    now = int(time.time())
    payload = {"iss": client_id, "sub": client_id, "aud": aud or server.token_url,
               "jti": uuid.uuid4().hex, "iat": now, "exp": now + 60}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    header = {"alg": alg}
    if key.kid:
        header["kid"] = key.kid
    return jwt.encode(header, payload, key, algorithms=[alg])


def rekeyed(kid):
    """JWT_KEY under another kid, or none."""
    d = {k: v for k, v in JWT_KEY.as_dict(private=True).items() if k != "kid"}
    if kid:
        d["kid"] = kid
    return ECKey.import_key(d)


def jwt_form(server, grant="client_credentials", **kw):
    return {"grant_type": grant,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(server, **kw)}


def error_is(name, answer, status, error):
    code, body, _ = answer
    ok = code == status and isinstance(body, dict) and body.get("error") == error
    check(name, ok, f"{code} {json.dumps(body)}")


def org_token(s, client="basic-client"):
    _, body, _ = call(s.token_url, {"grant_type": "client_credentials"}, basic=(client, "s3cret"))
    return body["access_token"]


def plain_checks(s):
    check(f"starts in well under 5 s ({s.startup:.2f} s)", s.startup < 3)
    check("ready line is exactly one compact JSON object",
          s.ready_line == json.dumps({"issuer": s.issuer, "port": s.port}, separators=(",", ":")),
          s.ready_line)
    url = s.token_url

    # client_credentials
    code, body, headers = call(url, {"grant_type": "client_credentials"}, basic=("basic-client", "s3cret"))
    check("client_secret_basic client_credentials works", code == 200 and body.get("token_type") == "Bearer", body)
    check("  answers the client's scope, a refresh token and expires_in",
          body.get("scope") == "invoices.read invoices.write" and "refresh_token" in body
          and body.get("expires_in") == 3600, body)
    check("  Cache-Control: no-store", headers.get("Cache-Control") == "no-store", headers)
    code, body, _ = call(url, {"grant_type": "client_credentials", "client_id": "post-client",
                               "client_secret": "s3cret", "scope": "invoices.read"})
    check("client_secret_post client_credentials works, narrowed scope",
          code == 200 and body.get("scope") == "invoices.read", body)

    # client authentication failures
    answer = call(url, {"grant_type": "client_credentials"}, basic=("basic-client", "wrong"))
    error_is("wrong secret (Basic) -> 401 invalid_client", answer, 401, "invalid_client")
    check("  with WWW-Authenticate: Basic", answer[2].get("WWW-Authenticate", "").startswith("Basic "),
          answer[2].get("WWW-Authenticate"))
    error_is("wrong secret (post) -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials", "client_id": "post-client",
                        "client_secret": "wrong"}), 401, "invalid_client")
    error_is("unknown client (Basic) -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials"}, basic=("nobody", "x")), 401, "invalid_client")
    error_is("unknown client (post) -> 400 invalid_client",
             call(url, {"grant_type": "client_credentials", "client_id": "nobody",
                        "client_secret": "x"}), 400, "invalid_client")
    error_is("secret in Basic and body -> 400 invalid_request",
             call(url, {"grant_type": "client_credentials", "client_id": "basic-client",
                        "client_secret": "s3cret"}, basic=("basic-client", "s3cret")), 400, "invalid_request")
    error_is("basic client sending client_secret_post -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials", "client_id": "basic-client",
                        "client_secret": "s3cret"}), 401, "invalid_client")
    error_is("post client sending Basic -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials"}, basic=("post-client", "s3cret")), 401, "invalid_client")
    error_is("no client authentication -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials"}), 401, "invalid_client")
    error_is("confidential client sending only client_id -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials", "client_id": "basic-client"}), 401, "invalid_client")

    # Basic encoding of a secret with reserved characters
    code, _, _ = call(url, {"grant_type": "client_credentials"}, raw_basic="odd-client:"
                      + urllib.parse.quote(ODD_SECRET, safe=""))
    check("Basic secret percent-encoded (space as %20) works", code == 200, code)
    code, _, _ = call(url, {"grant_type": "client_credentials"}, raw_basic="odd-client:"
                      + urllib.parse.quote_plus(ODD_SECRET, safe=""))
    check("Basic secret form-encoded with '+' for space is refused (authlib uses unquote)",
          code == 401, code)

    # scope, grant type
    error_is("unknown scope -> 400 invalid_scope",
             call(url, {"grant_type": "client_credentials", "scope": "invoices.read admin"},
                  basic=("basic-client", "s3cret")), 400, "invalid_scope")
    error_is("client without the grant (refresh_token) -> 400 unauthorized_client",
             call(url, {"grant_type": "refresh_token", "refresh_token": "x"},
                  basic=("cc-only-client", "s3cret")), 400, "unauthorized_client")
    error_is("public client asking client_credentials -> 400 unauthorized_client",
             call(url, {"grant_type": "client_credentials", "client_id": "public-client"}),
             400, "unauthorized_client")
    error_is("unknown grant_type -> 400 unsupported_grant_type",
             call(url, {"grant_type": "password", "username": "u", "password": "p"},
                  basic=("basic-client", "s3cret")), 400, "unsupported_grant_type")
    error_is("missing grant_type -> 400 unsupported_grant_type",
             call(url, {}, basic=("basic-client", "s3cret")), 400, "unsupported_grant_type")

    # private_key_jwt
    code, body, _ = call(url, jwt_form(s))
    check("private_key_jwt (ES256, aud = token endpoint) works",
          code == 200 and body.get("scope") == "invoices.read invoices.write", body)
    code, body, _ = call(url, jwt_form(s, aud=s.issuer))
    check("private_key_jwt with aud = issuer works", code == 200, body)
    code, body, _ = call(url, jwt_form(s, aud=["https://elsewhere", s.token_url]))
    check("private_key_jwt with aud an array holding the token endpoint works", code == 200, body)
    code, body, _ = call(url, jwt_form(s, key=rekeyed(None)))
    check("private_key_jwt without kid works (one key in the JWKS)", code == 200, body)
    error_is("private_key_jwt bad signature -> 400 invalid_client",
             call(url, jwt_form(s, key=OTHER_KEY)), 400, "invalid_client")
    form = jwt_form(s)
    call(url, form)
    error_is("private_key_jwt replayed jti -> 400 invalid_client", call(url, form), 400, "invalid_client")
    error_is("private_key_jwt without jti -> 400 invalid_client",
             call(url, jwt_form(s, jti=None)), 400, "invalid_client")
    error_is("private_key_jwt wrong aud -> 400 invalid_client",
             call(url, jwt_form(s, aud="https://elsewhere/token")), 400, "invalid_client")
    error_is("private_key_jwt expired (exp 2 min ago) -> 400 invalid_client",
             call(url, jwt_form(s, exp=int(time.time()) - 120)), 400, "invalid_client")
    code, body, _ = call(url, jwt_form(s, exp=int(time.time()) - 30))
    check("private_key_jwt exp 30 s ago still passes (60 s leeway)", code == 200, body)
    error_is("private_key_jwt without exp -> 400 invalid_client",
             call(url, jwt_form(s, exp=None)), 400, "invalid_client")
    error_is("private_key_jwt iat 5 min ahead -> 400 invalid_client",
             call(url, jwt_form(s, iat=int(time.time()) + 300)), 400, "invalid_client")
    code, body, _ = call(url, jwt_form(s, iat=None, exp=int(time.time()) + 86400 * 365))
    check("private_key_jwt without iat and exp a year away passes (authlib bounds neither)",
          code == 200, body)
    error_is("private_key_jwt iss != sub -> 400 invalid_client",
             call(url, jwt_form(s, iss="someone-else")), 400, "invalid_client")
    error_is("private_key_jwt unknown kid -> 400 invalid_client",
             call(url, jwt_form(s, key=rekeyed("nope"))),
             400, "invalid_client")
    error_is("private_key_jwt HS256 -> 400 invalid_client",
             call(url, jwt_form(s, key=OctKey.generate_key(256), alg="HS256")), 400, "invalid_client")
    p384 = ECKey.generate_key("P-384", parameters={"kid": "jwt-client-1"})
    error_is("private_key_jwt ES384 -> 400 invalid_client",
             call(url, jwt_form(s, key=p384, alg="ES384")), 400, "invalid_client")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc warns that "none" is deprecated
        unsigned = jwt.encode({"alg": "none"}, {"iss": "jwt-client", "sub": "jwt-client", "aud": s.token_url,
                                                "jti": uuid.uuid4().hex, "exp": int(time.time()) + 60},
                              None, algorithms=["none"])
    error_is("private_key_jwt alg none -> 400 invalid_client",
             call(url, {"grant_type": "client_credentials", "client_assertion": unsigned,
                        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}),
             400, "invalid_client")
    error_is("secret client sending an assertion -> 400 invalid_client",
             call(url, jwt_form(s, client_id="basic-client")), 400, "invalid_client")
    error_is("jwt client sending Basic -> 401 invalid_client",
             call(url, {"grant_type": "client_credentials"}, basic=("jwt-client", "x")), 401, "invalid_client")
    form = jwt_form(s)
    error_is("assertion plus Basic -> 400 invalid_request",
             call(url, form, basic=("basic-client", "s3cret")), 400, "invalid_request")

    # the grant endpoint and the code exchange
    org = org_token(s)
    grant_url = f"{s.issuer}/authorization-grant"
    code, body, _ = call(grant_url, {"user_id": "EMP-00001"}, bearer=org)
    check("/authorization-grant with an org token answers a code", code == 200 and "code" in body, body)
    auth_code = body.get("code")
    code, body, _ = call(f"{s.issuer}/oauth/authorization-grant", {"user_id": "EMP-00002"}, bearer=org)
    check("/oauth/authorization-grant (the platform's path) too", code == 200 and "code" in body, body)
    error_is("/authorization-grant unknown user -> 404 unknown_user",
             call(grant_url, {"user_id": "EMP-99999"}, bearer=org), 404, "unknown_user")
    error_is("/authorization-grant without bearer -> 401 invalid_token",
             call(grant_url, {"user_id": "EMP-00001"}), 401, "invalid_token")
    error_is("/authorization-grant bad bearer -> 401 invalid_token",
             call(grant_url, {"user_id": "EMP-00001"}, bearer="nope"), 401, "invalid_token")
    error_is("code exchange with the wrong redirect_uri -> 400 invalid_grant",
             call(url, {"grant_type": "authorization_code", "code": auth_code,
                        "redirect_uri": "http://127.0.0.1/other"}, basic=("basic-client", "s3cret")),
             400, "invalid_grant")
    error_is("code exchange by another client -> 400 invalid_grant",
             call(url, {"grant_type": "authorization_code", "code": auth_code, "redirect_uri": CALLBACK,
                        "client_id": "post-client", "client_secret": "s3cret"}), 400, "invalid_grant")
    code, user_tokens, _ = call(url, {"grant_type": "authorization_code", "code": auth_code,
                                      "redirect_uri": CALLBACK}, basic=("basic-client", "s3cret"))
    check("code exchange answers an access and a refresh token",
          code == 200 and "access_token" in user_tokens and "refresh_token" in user_tokens
          and user_tokens.get("scope") == "invoices.read invoices.write", user_tokens)
    error_is("code reused -> 400 invalid_grant",
             call(url, {"grant_type": "authorization_code", "code": auth_code, "redirect_uri": CALLBACK},
                  basic=("basic-client", "s3cret")), 400, "invalid_grant")
    error_is("a user token is no bearer for /authorization-grant -> 401",
             call(grant_url, {"user_id": "EMP-00001"}, bearer=user_tokens["access_token"]), 401, "invalid_token")
    code, body, _ = call(f"{s.issuer}/api/me", bearer=user_tokens["access_token"])
    check("/api/me with the user token -> the user",
          code == 200 and body.get("sub") == "EMP-00001" and body.get("client_id") == "basic-client", body)
    code, body, _ = call(f"{s.issuer}/api/me", bearer=org)
    check("/api/me with the org token -> the client", code == 200 and body.get("sub") == "basic-client", body)
    error_is("/api/me with a bad token -> 401", call(f"{s.issuer}/api/me", bearer="nope"), 401, "invalid_token")

    # refresh: rotation and reuse
    rt1 = user_tokens["refresh_token"]
    error_is("refresh without client authentication -> 401 invalid_client",
             call(url, {"grant_type": "refresh_token", "refresh_token": rt1}), 401, "invalid_client")
    error_is("refresh by another client -> 400 invalid_grant",
             call(url, {"grant_type": "refresh_token", "refresh_token": rt1, "client_id": "post-client",
                        "client_secret": "s3cret"}), 400, "invalid_grant")
    error_is("refresh asking a wider scope -> 400 invalid_scope",
             call(url, {"grant_type": "refresh_token", "refresh_token": rt1, "scope": "admin"},
                  basic=("basic-client", "s3cret")), 400, "invalid_scope")
    code, body, _ = call(url, {"grant_type": "refresh_token", "refresh_token": rt1},
                         basic=("basic-client", "s3cret"))
    rt2 = body.get("refresh_token")
    check("refresh works and rotates the refresh token", code == 200 and rt2 and rt2 != rt1, body)
    code, me, _ = call(f"{s.issuer}/api/me", bearer=body.get("access_token"))
    check("  the refreshed token is still the user's", me.get("sub") == "EMP-00001", me)
    error_is("old refresh token reused -> 400 invalid_grant",
             call(url, {"grant_type": "refresh_token", "refresh_token": rt1},
                  basic=("basic-client", "s3cret")), 400, "invalid_grant")
    code, body, _ = call(url, {"grant_type": "refresh_token", "refresh_token": rt2},
                         basic=("basic-client", "s3cret"))
    check("the rotated refresh token works once", code == 200, body)
    error_is("unknown refresh token -> 400 invalid_grant",
             call(url, {"grant_type": "refresh_token", "refresh_token": "nope"},
                  basic=("basic-client", "s3cret")), 400, "invalid_grant")
    _, cc, _ = call(url, {"grant_type": "client_credentials"}, basic=("basic-client", "s3cret"))
    code, body, _ = call(url, {"grant_type": "refresh_token", "refresh_token": cc["refresh_token"]},
                         basic=("basic-client", "s3cret"))
    check("a client_credentials refresh token refreshes to an org token", code == 200, body)
    code, grant, _ = call(grant_url, {"user_id": "EMP-00001"}, bearer=body.get("access_token"))
    check("  which /authorization-grant accepts", code == 200, grant)

    # private_key_jwt through the whole user flow
    code, body, _ = call(url, jwt_form(s))
    code, grant, _ = call(grant_url, {"user_id": "EMP-00002"}, bearer=body["access_token"])
    form = jwt_form(s, grant="authorization_code")
    form.update(code=grant["code"], redirect_uri=CALLBACK)
    code, body, _ = call(url, form)
    check("private_key_jwt code exchange", code == 200 and "refresh_token" in body, body)
    form = jwt_form(s, grant="refresh_token")
    form.update(refresh_token=body["refresh_token"])
    code, body, _ = call(url, form)
    check("private_key_jwt refresh", code == 200 and "refresh_token" in body, body)

    # a public client through authlib's authorization endpoint
    q = urllib.parse.urlencode({"response_type": "code", "client_id": "public-client",
                                "redirect_uri": CALLBACK, "state": "xyz", "user_id": "EMP-00001"})

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None

    try:
        urllib.request.build_opener(NoRedirect).open(f"{s.issuer}/oauth/authorize?{q}", timeout=10)
        location = ""
    except urllib.error.HTTPError as e:
        location = e.headers.get("Location", "")
    params = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    check("/oauth/authorize redirects with a code and the state",
          location.startswith(CALLBACK) and "code" in params and params.get("state") == ["xyz"], location)
    code, body, _ = call(url, {"grant_type": "authorization_code", "code": params.get("code", [""])[0],
                               "redirect_uri": CALLBACK, "client_id": "public-client"})
    check("public client (none) code exchange", code == 200 and "refresh_token" in body, body)
    code, body, _ = call(url, {"grant_type": "refresh_token", "refresh_token": body.get("refresh_token"),
                               "client_id": "public-client"})
    check("public client refresh", code == 200, body)

    # metadata
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        code, body, _ = call(s.issuer + path)
        check(f"{path}", code == 200 and body.get("issuer") == s.issuer
              and body.get("token_endpoint") == s.token_url
              and body.get("token_endpoint_auth_methods_supported")
              == ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
              and "ES256" in body.get("token_endpoint_auth_signing_alg_values_supported", []), body)

    # counters
    code, stats, _ = call(f"{s.issuer}/_stats")
    check("/_stats counts requests, grants, reuse and errors",
          stats["refresh_reused"] == 1 and stats["code_reused"] == 1
          and stats["errors"].get("invalid_client", 0) >= 10
          and stats["by_grant"]["client_credentials"] > 10
          and stats["token_requests"] == sum(stats["by_grant"].values()), stats)


def jwt_checks(s):
    url = s.token_url
    code, body, _ = call(url, {"grant_type": "client_credentials"}, basic=("basic-client", "s3cret"))
    check("omit_expires_in: no expires_in in the answer", code == 200 and "expires_in" not in body, body)
    check("refresh_on_client_credentials false: no refresh token", "refresh_token" not in body, body)
    _, meta, _ = call(s.issuer + "/.well-known/oauth-authorization-server")
    _, jwks, _ = call(meta["jwks_uri"])
    token = jwt.decode(body["access_token"], KeySet.import_key_set(jwks))
    c = token.claims
    check("jwt_access_tokens: an RS256 JWT verified by jwks_uri, with exp/iat/sub/client_id",
          token.header["alg"] == "RS256" and c["exp"] - c["iat"] == 2 and c["sub"] == "basic-client"
          and c["client_id"] == "basic-client" and c["iss"] == s.issuer, c)
    code, me, _ = call(f"{s.issuer}/api/me", bearer=body["access_token"])
    check("  /api/me takes it", code == 200, me)
    time.sleep(3.1)
    code, me, _ = call(f"{s.issuer}/api/me", bearer=body["access_token"])
    check("  and refuses it after token_lifetime (no expires_in sent)", code == 401, me)
    error_is("  an expired org token is no bearer for /authorization-grant",
             call(f"{s.issuer}/authorization-grant", {"user_id": "EMP-00001"}, bearer=body["access_token"]),
             401, "invalid_token")
    # stdin closed -> the server exits
    s.proc.stdin.close()
    try:
        s.proc.wait(5)
        check("exits when its stdin closes", True)
    except subprocess.TimeoutExpired:
        check("exits when its stdin closes", False)


def make_tls(workdir):
    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("throwaway test CA")).issuer_name(name("throwaway test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress
    leaf = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {}
    for label, data in (("ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
                        ("leaf.pem", leaf.public_bytes(serialization.Encoding.PEM)),
                        ("leaf-key.pem", leaf_key.private_bytes(serialization.Encoding.PEM,
                                                                serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))):
        paths[label] = os.path.join(workdir, label)
        with open(paths[label], "wb") as f:
            f.write(data)
    return paths


def tls_checks(s, paths):
    import socket
    check("TLS: the issuer is https", s.issuer.startswith("https://127.0.0.1:"), s.issuer)
    idle = socket.create_connection(("127.0.0.1", s.port))  # says nothing: must not block others
    context = ssl.create_default_context(cafile=paths["ca.pem"])
    code, body, _ = call(s.token_url, {"grant_type": "client_credentials"}, basic=("basic-client", "s3cret"),
                         context=context)
    check("TLS: client_credentials over https with the throwaway CA", code == 200, body)
    try:
        call(s.token_url, {"grant_type": "client_credentials"}, basic=("basic-client", "s3cret"),
             context=ssl.create_default_context())
        check("TLS: a client without the CA is refused", False)
    except urllib.error.URLError as e:
        check("TLS: a client without the CA is refused", "CERTIFICATE_VERIFY_FAILED" in str(e), e)
    idle.close()
    s.proc.send_signal(signal.SIGTERM)
    try:
        s.proc.wait(5)
        check("exits on SIGTERM", True)
    except subprocess.TimeoutExpired:
        check("exits on SIGTERM", False)


def main():
    with tempfile.TemporaryDirectory() as workdir:
        servers = []
        try:
            s = Server(config(), workdir)
            servers.append(s)
            plain_checks(s)
            s = Server(config(omit_expires_in=True, jwt_access_tokens=True, token_lifetime=2,
                              refresh_on_client_credentials=False), workdir)
            servers.append(s)
            jwt_checks(s)
            paths = make_tls(workdir)
            s = Server(config(tls={"cert": paths["leaf.pem"], "key": paths["leaf-key.pem"]}), workdir)
            servers.append(s)
            tls_checks(s, paths)
        finally:
            for s in servers:
                s.stop()
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    sys.exit(1 if RESULTS["failed"] else 0)


if __name__ == "__main__":
    main()
