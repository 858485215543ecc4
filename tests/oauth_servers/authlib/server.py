#!/usr/bin/env python3
"""A standard OAuth 2.0 authorization server for tokenbroker's integration tests, built on
authlib's Flask integration (authlib.integrations.flask_oauth2.AuthorizationServer).

    python3 tests/oauth_servers/authlib/server.py CONFIG.json

Serves on 127.0.0.1, an ephemeral port, and prints one JSON line when ready:
{"issuer": "http://127.0.0.1:PORT", "port": PORT}. Exits on SIGTERM, SIGINT, and when its
standard input closes. README.md beside this file has the config and the endpoints.

authlib does the OAuth work: client authentication (client_secret_basic,
client_secret_post, none, and RFC 7523 private_key_jwt), the client_credentials,
authorization_code and refresh_token grants, token generation (RFC 6750 bearer or RFC 9068
JWT), the authorization endpoint that issues codes, and the RFC 8414 metadata checks. This
file supplies the storage authlib asks for (in memory), one rule authlib lacks (one client
authentication method per request, RFC 6749 section 2.3), and the test-only endpoints.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import ssl
import sys
import threading
import time
from collections import Counter
from urllib.parse import parse_qs, urlencode, urlsplit

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import (
    AuthorizationCodeMixin,
    ClientMixin,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Error,
    OAuth2Request,
    TokenMixin,
    grants,
)
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from flask import Flask, jsonify, request
from joserfc.jwk import KeySet, RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

CALLBACK = "http://127.0.0.1/callback"
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
GRANT_TYPES = ["client_credentials", "authorization_code", "refresh_token"]
# The asymmetric algorithms joserfc verifies by default (its "recommended" set is HS256,
# RS256 and ES256; HS256 cannot match a public JWK).
ASSERTION_ALGS = ["ES256", "RS256"]
CODE_LIFETIME = 60

CONFIG_KEYS = {
    "tls": None,
    "token_lifetime": 3600,
    "omit_expires_in": False,
    "jwt_access_tokens": False,
    "refresh_on_client_credentials": True,
    "refresh_token_lifetime": None,
    "client_assertion_audiences": ["token_endpoint", "issuer"],
    "watch_stdin": True,
    "clients": [],
    "users": [],
}


def fail(message: str) -> None:
    print(f"authlib test server: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


# --- the models authlib's mixins ask for ---------------------------------------------------


class Client(ClientMixin):
    def __init__(self, spec: dict):
        unknown = set(spec) - {
            "client_id", "client_secret", "auth_method", "scope", "grant_types", "jwks",
            "redirect_uris",
        }
        if unknown:
            fail(f"client {spec.get('client_id')!r}: unknown keys {sorted(unknown)}")
        self.client_id = spec["client_id"]
        self.auth_method = spec.get("auth_method", "client_secret_basic")
        if self.auth_method not in AUTH_METHODS:
            fail(f"client {self.client_id!r}: auth_method must be one of {AUTH_METHODS}")
        self.client_secret = spec.get("client_secret")
        if self.auth_method.startswith("client_secret_") and not self.client_secret:
            fail(f"client {self.client_id!r}: {self.auth_method} needs a client_secret")
        self.jwks = None
        if self.auth_method == "private_key_jwt":
            if "jwks" not in spec:
                fail(f"client {self.client_id!r}: private_key_jwt needs jwks")
            self.jwks = KeySet.import_key_set(spec["jwks"])
        self.scope = " ".join(str(spec.get("scope") or "").split())
        default = GRANT_TYPES[1:] if self.auth_method == "none" else GRANT_TYPES
        self.grant_types = list(spec.get("grant_types", default))
        self.redirect_uris = list(spec.get("redirect_uris", [CALLBACK]))

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope):
        # No scope asked for: the client's whole scope (RFC 6749 section 3.3's default).
        # Anything outside it: None, which authlib answers with invalid_scope.
        if not scope:
            return self.scope
        asked = list(dict.fromkeys(scope.split()))
        if not set(asked) <= set(self.scope.split()):
            return None
        return " ".join(asked)

    def check_redirect_uri(self, redirect_uri):
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret):
        if not self.client_secret or client_secret is None:
            return False
        return hmac.compare_digest(self.client_secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method, endpoint):
        # Each client authenticates only with the method it was registered with.
        return method == self.auth_method

    def check_response_type(self, response_type):
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class User:
    def __init__(self, user_id: str):
        self.user_id = user_id

    def get_user_id(self):
        return self.user_id


class ClientPrincipal(User):
    """The "user" of a client_credentials refresh token: authlib's RefreshTokenGrant wants
    one, and RFC 9068 makes the client the subject of such tokens."""


class Token(TokenMixin):
    def __init__(self, token: dict, client_id: str, user_id, scope, grant_type, lifetime,
                 refresh_lifetime):
        now = time.time()
        self.access_token = token["access_token"]
        self.refresh_token = token.get("refresh_token")
        self.client_id = client_id
        self.user_id = user_id  # None: an org (client) token
        self.scope = scope
        self.grant_type = grant_type
        self.issued_at = now
        self.expires_at = now + lifetime
        self.refresh_expires_at = now + refresh_lifetime if refresh_lifetime else None
        self.access_revoked = False
        self.refresh_revoked = False

    def check_client(self, client):
        return client.get_client_id() == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return int(self.expires_at - self.issued_at)

    def is_expired(self):
        return time.time() >= self.expires_at

    def is_revoked(self):
        return self.access_revoked

    def refresh_usable(self):
        if self.refresh_revoked:
            return False
        return self.refresh_expires_at is None or time.time() < self.refresh_expires_at


class AuthCode(AuthorizationCodeMixin):
    def __init__(self, code, client_id, redirect_uri, scope, user_id):
        self.code = code
        self.client_id = client_id
        self.redirect_uri = redirect_uri
        self.scope = scope
        self.user_id = user_id
        self.expires_at = time.time() + CODE_LIFETIME

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class State:
    """Everything the server knows, in memory; one lock serialises every change."""

    def __init__(self, config: dict):
        self.lock = threading.RLock()
        self.config = config
        self.issuer = None
        self.clients = {}
        for spec in config["clients"]:
            client = Client(spec)
            if client.client_id in self.clients:
                fail(f"client {client.client_id!r} appears twice")
            self.clients[client.client_id] = client
        self.users = {uid: User(uid) for uid in config["users"]}
        self.access = {}  # access token -> Token
        self.refresh = {}  # refresh token -> Token (kept after rotation, to spot reuse)
        self.codes = {}  # code -> AuthCode
        self.used_codes = set()
        self.jtis = {}  # (client_id, jti) -> time after which it may be forgotten
        self.token_requests = 0
        self.by_grant = Counter({g: 0 for g in GRANT_TYPES})
        self.errors = Counter()
        self.refresh_reused = 0
        self.code_reused = 0
        self.authorization_grants = 0

    @property
    def token_endpoint(self):
        return f"{self.issuer}/oauth/token"

    def live_token(self, value):
        token = self.access.get(value) if value else None
        if token is None or token.is_expired() or token.is_revoked():
            return None
        return token


STATE: State = None  # set in main()


# --- authlib: grants, client authentication, tokens ------------------------------------


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    @hooked
    def create_token_response(self):
        # authlib's own, with include_refresh_token from the config (it passes False).
        token = self.generate_token(
            scope=self.request.payload.scope,
            include_refresh_token=STATE.config["refresh_on_client_credentials"],
        )
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS

    def save_authorization_code(self, code, request):
        STATE.codes[code] = AuthCode(
            code,
            request.client.get_client_id(),
            request.payload.redirect_uri,
            request.scope,
            request.user.get_user_id(),
        )

    def query_authorization_code(self, code, client):
        item = STATE.codes.get(code)
        if item is None:
            if code in STATE.used_codes:
                STATE.code_reused += 1
            return None
        if item.client_id != client.get_client_id() or time.time() >= item.expires_at:
            return None
        return item

    def delete_authorization_code(self, authorization_code):
        STATE.codes.pop(authorization_code.code, None)
        STATE.used_codes.add(authorization_code.code)

    def authenticate_user(self, authorization_code):
        return STATE.users.get(authorization_code.user_id)


class RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation: every refresh answers a new refresh token

    def authenticate_refresh_token(self, refresh_token):
        token = STATE.refresh.get(refresh_token)
        if token is None:
            return None
        if token.refresh_revoked:
            STATE.refresh_reused += 1
            return None
        return token if token.refresh_usable() else None

    def authenticate_user(self, refresh_token):
        if refresh_token.user_id is None:
            return ClientPrincipal(refresh_token.client_id)
        return STATE.users.get(refresh_token.user_id)

    def revoke_old_credential(self, refresh_token):
        # Single use: the old refresh token is spent (its access token lives on until exp).
        refresh_token.refresh_revoked = True


class PrivateKeyJWT(JWTBearerClientAssertion):
    """RFC 7523 section 2.2 client authentication, registered as private_key_jwt."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __call__(self, query_client, request):
        client = super().__call__(query_client, request)
        # RFC 7521 section 4.2: a client_id sent beside the assertion MUST name the same
        # client. authlib ignores it (it goes by "sub" alone), so check here.
        named = request.form.get("client_id")
        if client is not None and named is not None and named != client.get_client_id():
            raise InvalidClientError(description="client_id does not match the assertion")
        return client

    def get_audiences(self):
        named = {"token_endpoint": STATE.token_endpoint, "issuer": STATE.issuer}
        return [named.get(a, a) for a in STATE.config["client_assertion_audiences"]]

    def validate_jti(self, claims, jti):
        now = time.time()
        for key in [k for k, until in STATE.jtis.items() if until < now]:
            del STATE.jtis[key]
        key = (claims["sub"], jti)
        if key in STATE.jtis:
            return False
        STATE.jtis[key] = float(claims["exp"]) + self.leeway
        return True

    def resolve_client_public_key(self, client):
        if client.jwks is None:
            raise InvalidClientError(
                description="The client cannot authenticate with method: private_key_jwt"
            )
        return client.jwks


class Server(AuthorizationServer):
    def authenticate_client(self, request, methods, endpoint="token"):
        # RFC 6749 section 2.3: a client MUST NOT use more than one authentication method
        # in each request. authlib takes the first that works (Basic first), so refuse here.
        presented = []
        authorization = request.headers.get("Authorization") or ""
        if authorization[:6].lower() == "basic ":
            presented.append("client_secret_basic")
        if request.form.get("client_secret") is not None:
            presented.append("client_secret_post")
        if request.form.get("client_assertion") or request.form.get("client_assertion_type"):
            presented.append("private_key_jwt")
        if len(presented) > 1:
            raise InvalidRequestError("more than one client authentication method")
        return super().authenticate_client(request, methods, endpoint)


def save_token(token, request):
    user = request.user
    user_id = None if user is None or isinstance(user, ClientPrincipal) else user.get_user_id()
    record = Token(
        token,
        request.client.get_client_id(),
        user_id,
        token.get("scope"),
        request.payload.grant_type,
        STATE.config["token_lifetime"],
        STATE.config["refresh_token_lifetime"],
    )
    STATE.access[record.access_token] = record
    if record.refresh_token:
        STATE.refresh[record.refresh_token] = record


class AccessTokenJWT(JWTBearerTokenGenerator):
    def __init__(self, key_set, **kwargs):
        super().__init__(issuer=None, alg="RS256", **kwargs)
        self.key_set = key_set

    def get_jwks(self):
        return self.key_set


def token_generator(config, signing_keys):
    lifetime = config["token_lifetime"]

    def refresh_token(**_):
        return generate_token(48)

    def expires(client, grant_type):
        return lifetime

    if signing_keys is not None:
        inner = AccessTokenJWT(signing_keys, refresh_token_generator=refresh_token,
                               expires_generator=expires)
    else:
        inner = BearerTokenGenerator(lambda **_: generate_token(42), refresh_token,
                                     expires)

    def generate(**kwargs):
        if isinstance(inner, AccessTokenJWT):
            inner.issuer = STATE.issuer
        token = inner(**kwargs)
        if config["omit_expires_in"]:
            token.pop("expires_in", None)  # still expires after token_lifetime
        return token

    return generate


# --- the Flask app -------------------------------------------------------------------------


def bearer():
    header = request.headers.get("Authorization") or ""
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def invalid_token():
    response = jsonify(error="invalid_token",
                       error_description="missing, unknown or expired access token")
    response.status_code = 401
    response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    return response


def internal_authorization_request(params):
    """An authorization request as authlib's authorization endpoint takes it, made here
    rather than sent by a browser."""
    oauth_request = OAuth2Request("GET", f"{STATE.issuer}/oauth/authorize?{urlencode(params)}")
    oauth_request.payload = BasicOAuth2Payload(params)
    return oauth_request


def code_from(response):
    """The code (or the error) in an authorization response's redirect."""
    location = response.headers.get("Location") or ""
    query = parse_qs(urlsplit(location).query)
    if "code" in query:
        return query["code"][0], None
    return None, (query.get("error", ["server_error"])[0],
                  query.get("error_description", [None])[0])


def create_app(state: State, signing_keys):
    app = Flask(__name__)
    server = Server(app, query_client=state.clients.get, save_token=save_token)
    server.register_token_generator("default", token_generator(state.config, signing_keys))
    server.scopes_supported = sorted({s for c in state.clients.values() for s in c.scope.split()})
    server.register_grant(ClientCredentialsGrant)
    server.register_grant(AuthorizationCodeGrant)
    server.register_grant(RefreshTokenGrant)
    server.register_client_auth_method("private_key_jwt", PrivateKeyJWT())

    @app.post("/oauth/token")
    def token():
        grant_type = request.values.get("grant_type")
        with state.lock:
            response = server.create_token_response()
            state.token_requests += 1
            state.by_grant[grant_type if grant_type is not None else "(missing)"] += 1
            if response.status_code >= 400:
                body = response.get_json(silent=True) or {}
                state.errors[body.get("error", str(response.status_code))] += 1
        return response

    def authorization_grant():
        with state.lock:
            org_token = state.live_token(bearer())
            if org_token is None or org_token.user_id is not None:
                return invalid_token()
            user = state.users.get(request.form.get("user_id", ""))
            if user is None:
                return jsonify(error="unknown_user"), 404
            client = state.clients[org_token.client_id]
            params = {"response_type": "code", "client_id": client.client_id,
                      "redirect_uri": CALLBACK, "scope": client.scope}
            oauth_request = internal_authorization_request(params)
            try:
                grant = server.get_authorization_grant(oauth_request)
            except OAuth2Error as error:
                return jsonify(error=error.error, error_description=error.description), 400
            code, error = code_from(server.create_authorization_response(
                oauth_request, grant_user=user, grant=grant))
            if code is None:
                return jsonify(error=error[0], error_description=error[1]), 400
            state.authorization_grants += 1
            return jsonify(code=code)

    # The platform's path and the short one.
    app.post("/authorization-grant", endpoint="authorization_grant")(authorization_grant)
    app.post("/oauth/authorization-grant", endpoint="authorization_grant_oauth")(
        authorization_grant)

    @app.get("/oauth/authorize")
    def authorize():
        # authlib's authorization endpoint, consenting at once for the user named by
        # user_id (a test stands in for the logged-in user); answers 302 to redirect_uri.
        with state.lock:
            user = state.users.get(request.args.get("user_id", ""))
            if user is None:
                return jsonify(error="unknown_user"), 404
            oauth_request = server.create_oauth2_request(None)
            try:
                grant = server.get_authorization_grant(oauth_request)
            except OAuth2Error as error:
                return server.handle_error_response(oauth_request, error)
            return server.create_authorization_response(oauth_request, grant_user=user,
                                                        grant=grant)

    @app.get("/api/me")
    def me():
        with state.lock:
            token = state.live_token(bearer())
            if token is None:
                return invalid_token()
            return jsonify(sub=token.user_id or token.client_id, client_id=token.client_id,
                           scope=token.scope)

    def metadata():
        issuer = state.issuer
        doc = {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/oauth/authorize",
            "token_endpoint": state.token_endpoint,
            "token_endpoint_auth_methods_supported": AUTH_METHODS,
            "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGS,
            "grant_types_supported": GRANT_TYPES,
            "response_types_supported": ["code"],
            "scopes_supported": server.scopes_supported,
        }
        if signing_keys is not None:
            doc["jwks_uri"] = f"{issuer}/.well-known/jwks.json"
        AuthorizationServerMetadata(doc).validate()
        return jsonify(doc)

    app.get("/.well-known/oauth-authorization-server", endpoint="as_metadata")(metadata)
    app.get("/.well-known/openid-configuration", endpoint="openid_configuration")(metadata)

    if signing_keys is not None:
        @app.get("/.well-known/jwks.json")
        def jwks():
            return jsonify(signing_keys.as_dict(private=False))

    @app.get("/_stats")
    def stats():
        with state.lock:
            return jsonify(
                token_requests=state.token_requests,
                by_grant=dict(state.by_grant),
                refresh_reused=state.refresh_reused,
                code_reused=state.code_reused,
                authorization_grants=state.authorization_grants,
                errors=dict(state.errors),
            )

    return app


# --- serving -------------------------------------------------------------------------------


class QuietHandler(WSGIRequestHandler):
    """No request lines (they could carry codes in query strings); errors still go to
    stderr."""

    def log_request(self, code="-", size="-"):
        pass


def load_config(path):
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        fail(f"cannot read config {path}: {e}")
    unknown = set(raw) - set(CONFIG_KEYS)
    if unknown:
        fail(f"unknown config keys {sorted(unknown)}")
    config = {**CONFIG_KEYS, **raw}
    if not isinstance(config["token_lifetime"], int) or config["token_lifetime"] <= 0:
        fail("token_lifetime must be a positive integer (seconds)")
    return config


def exit_now(*_):
    os._exit(0)


def watch_stdin():
    try:
        while sys.stdin.buffer.read(65536):
            pass
    except (OSError, ValueError):
        pass
    os._exit(0)


def main():
    global STATE
    if len(sys.argv) != 2:
        fail("usage: server.py CONFIG.json")
    config = load_config(sys.argv[1])
    STATE = State(config)
    signing_keys = None
    if config["jwt_access_tokens"]:
        key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        key.ensure_kid()
        signing_keys = KeySet([key])
    app = create_app(STATE, signing_keys)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    httpd = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    scheme = "http"
    if config["tls"]:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(config["tls"]["cert"], config["tls"]["key"])
        # The handshake runs in each connection's thread (on its first read), so a client
        # that connects and says nothing cannot hold up the accept loop.
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True,
                                           do_handshake_on_connect=False)
        httpd.ssl_context = context
        scheme = "https"
    port = httpd.server_address[1]
    STATE.issuer = f"{scheme}://127.0.0.1:{port}"

    signal.signal(signal.SIGTERM, exit_now)
    signal.signal(signal.SIGINT, exit_now)
    if config["watch_stdin"]:
        threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    print(json.dumps({"issuer": STATE.issuer, "port": port}, separators=(",", ":")), flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
