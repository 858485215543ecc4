//! What crosses the proxy in each direction: the caller's credentials, the broker's own
//! `Tokenbroker-*` headers and hop-by-hop headers (RFC 9110 §7.6.1) never reach the
//! platform; the platform's answer comes back without its hop-by-hop headers, and with
//! every `Set-Cookie` as it was sent. Pure functions over header maps.

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The prefix of the headers that talk to the broker (`Tokenbroker-Org`,
/// `Tokenbroker-User`), never forwarded.
pub const BROKER_PREFIX: &str = "tokenbroker-";

/// Hop-by-hop headers: they describe one connection, not the message (RFC 9110 §7.6.1,
/// plus `Keep-Alive` and `Proxy-Connection`, which HTTP/1.0 clients still send).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The headers of a caller's request as they go to the platform, with `Authorization:
/// Bearer <token>` the only credential. Dropped: the caller's `Authorization` and
/// `Proxy-Authorization`, every `Tokenbroker-*` header, the hop-by-hop headers and those
/// its `Connection` header names, and `Host` (the platform's comes from its URL).
pub fn to_platform(caller: &HeaderMap, token: &str) -> Result<HeaderMap, InvalidToken> {
    let mut out = without_hop_by_hop(caller);
    out.remove(header::AUTHORIZATION);
    out.remove(header::PROXY_AUTHORIZATION);
    out.remove(header::HOST);
    let own: Vec<HeaderName> = out
        .keys()
        .filter(|name| name.as_str().starts_with(BROKER_PREFIX))
        .cloned()
        .collect();
    for name in own {
        out.remove(name);
    }
    let mut bearer = HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| InvalidToken)?;
    bearer.set_sensitive(true);
    out.insert(header::AUTHORIZATION, bearer);
    Ok(out)
}

/// The headers of the platform's answer as they go back to the caller: all but the
/// hop-by-hop ones. `Set-Cookie` (and any other repeated header) keeps every value, in
/// order.
pub fn to_caller(platform: &HeaderMap) -> HeaderMap {
    without_hop_by_hop(platform)
}

/// A token that cannot be a header value (a control character): the platform's fault,
/// never forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the token is not a valid header value")]
pub struct InvalidToken;

/// `headers` less the hop-by-hop ones, and less every header a `Connection` header names.
fn without_hop_by_hop(headers: &HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::try_from(name.trim()).ok())
        .collect();
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(name) && !named.contains(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn the_platform_gets_only_the_brokers_bearer() {
        let caller = map(&[
            ("authorization", "Bearer callers-own"),
            ("proxy-authorization", "Bearer api-key"),
            ("tokenbroker-org", "acme"),
            ("tokenbroker-user", "EMP-00001"),
            ("host", "127.0.0.1:8081"),
            ("accept", "application/json"),
            ("x-request-id", "r-1"),
        ]);
        let out = to_platform(&caller, "t0ken").unwrap();
        let auth: Vec<_> = out.get_all("authorization").iter().collect();
        assert_eq!(auth, ["Bearer t0ken"]);
        assert!(auth[0].is_sensitive());
        for gone in [
            "proxy-authorization",
            "tokenbroker-org",
            "tokenbroker-user",
            "host",
        ] {
            assert!(!out.contains_key(gone), "{gone} forwarded");
        }
        assert_eq!(out["accept"], "application/json");
        assert_eq!(out["x-request-id"], "r-1");
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stop_at_the_proxy() {
        let caller = map(&[
            ("connection", "keep-alive, x-session-hint"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-session-hint", "abc"),
            ("content-type", "text/plain"),
        ]);
        let out = to_platform(&caller, "t").unwrap();
        let names: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "authorization"]);
        let answer = to_caller(&map(&[
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]));
        let names: Vec<_> = answer.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type"]);
    }

    #[test]
    fn every_set_cookie_comes_back_unchanged_and_in_order() {
        let answer = to_caller(&map(&[
            ("set-cookie", "a=1; Path=/; HttpOnly"),
            ("set-cookie", "b=2; Secure"),
            ("location", "https://expense.example/next"),
        ]));
        let cookies: Vec<_> = answer.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/; HttpOnly", "b=2; Secure"]);
        assert_eq!(answer["location"], "https://expense.example/next");
    }

    #[test]
    fn a_token_that_is_no_header_value_is_refused() {
        assert_eq!(
            to_platform(&HeaderMap::new(), "bad\ntoken"),
            Err(InvalidToken)
        );
    }
}
