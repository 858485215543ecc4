//! The token-injecting proxy end to end: real HTTP callers (reqwest) through the proxy to
//! the sandbox over sockets, and to a small echo server where a test must see what the
//! platform received. Each test starts its own sandbox and broker on 127.0.0.1:0.

mod common;

use std::{net::SocketAddr, sync::LazyLock, time::Duration};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use bytes::Bytes;
use common::{Capture, Harness, SECRET_ENV, sandbox_config};
use futures::StreamExt;
use serde_json::Value;
use sha2::Digest;
use tokenbroker::sandbox::Sandbox;
use tokio::net::TcpListener;

/// The log of every test in this binary, for the audit lines.
static LOG: LazyLock<Capture> = LazyLock::new(|| Capture::install("info"));

/// `[proxy]` on 127.0.0.1:0 (the harness binds it) with `extra` keys, and org `acme`
/// against `sandbox` with its API at `api_url` (the sandbox's own, unless given).
fn proxy_toml(sandbox: &Sandbox, extra: &str, api_url: Option<&str>) -> String {
    let base = sandbox.base_url();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n{extra}\n\n[orgs.acme]\ntoken_url = \"{}\"\nauthorization_grant_url = \"{}\"\nclient_id = \"acme-client\"\nclient_secret_env = \"{SECRET_ENV}\"\napi_url = \"{}\"\n",
        sandbox.token_url(),
        sandbox.authorization_grant_url(),
        api_url.unwrap_or(&base),
    )
}

async fn start(extra: &str) -> Harness {
    LazyLock::force(&LOG);
    let extra = extra.to_owned();
    Harness::with(
        sandbox_config(),
        move |s| proxy_toml(s, &extra, None),
        |_| None,
    )
    .await
}

/// A client that follows no redirects (so that a test sees the platform's own answer).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn url(h: &Harness, path: &str) -> String {
    format!("http://{}{path}", h.proxy.expect("the proxy runs"))
}

async fn json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_user_header_acts_as_that_user_and_none_as_the_org() {
    let h = start("").await;
    let user = h.user(1);
    let (status, me) = json(
        client()
            .get(url(&h, "/api/v1/expense/me"))
            .header("Tokenbroker-Org", "acme")
            .header("Tokenbroker-User", &user.external_id)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["externalSourceId"], user.external_id.as_str());
    assert_eq!(me["personId"], user.person_id.as_str());
    // One org configured: Tokenbroker-Org may be left out.
    let (status, org) = json(
        client()
            .get(url(&h, "/api/v1/admin/organization"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{org}");
    assert_eq!(org["organization"], "acme");
    // A user the platform does not know: the proxy's own 404, saying so.
    let unknown = client()
        .get(url(&h, "/api/v1/expense/me"))
        .header("Tokenbroker-User", "EMP-99999")
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.headers()["tokenbroker-error"], "unknown_user");
    let (status, body) = json(unknown).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"], "unknown_user");
    let (status, body) = json(
        client()
            .get(url(&h, "/api/v1/admin/organization"))
            .header("Tokenbroker-Org", "globex")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (404, Some("unknown_org")));
    // Audited: the caller, the path without its query, the status, the fingerprint.
    let audit = LOG.text();
    let line = audit
        .lines()
        .find(|l| {
            l.contains("token used by the proxy")
                && l.contains("path=\"/api/v1/admin/organization\"")
                && l.contains("status=200")
        })
        .expect("an audit line for the org's request");
    for field in [
        "caller=\"anonymous\"",
        "method=\"GET\"",
        "status=200",
        "org=acme",
        "fingerprint=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    let rendered = tokenbroker::metrics::render(&h.registry);
    assert!(
        rendered.contains("tokenbroker_proxy_requests_total{status=\"200\"} 2"),
        "{rendered}"
    );
    assert!(rendered.contains("tokenbroker_proxy_requests_total{status=\"404\"} 2"));
    assert!(
        rendered.contains("tokenbroker_proxy_duration_seconds_count 4"),
        "{rendered}"
    );
    let answered: u64 = rendered
        .lines()
        .find_map(|l| l.strip_prefix("tokenbroker_proxy_body_bytes_total{direction=\"response\"} "))
        .and_then(|v| v.parse().ok())
        .expect("response bytes counted");
    assert!(answered > 0, "{rendered}");
    h.stop().await;
}

#[tokio::test]
async fn a_revoked_token_is_healed_by_one_rotation_and_one_retry() {
    let h = start("").await;
    let organization = || async {
        client()
            .get(url(&h, "/api/v1/admin/organization?page=1"))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(organization().await.status(), 200);
    let token = h.org_token().await.unwrap().access_token;
    assert!(h.sandbox.revoke_access_token(&token));
    let before = h.sandbox.stats();
    let healed = organization().await;
    assert_eq!(healed.headers()["tokenbroker-token-rotated"], "true");
    let (status, body) = json(healed).await;
    assert_eq!((status, body["organization"].as_str()), (200, Some("acme")));
    let after = h.sandbox.stats();
    assert_eq!(
        after.upstream_requests() - before.upstream_requests(),
        1,
        "one rotation"
    );
    assert_eq!(
        after.api - before.api,
        2,
        "the refused request and its retry"
    );
    assert_ne!(h.org_token().await.unwrap().access_token, token);
    assert!(
        !LOG.text().contains("page=1"),
        "the audit writes paths without their query"
    );

    // A user's token: rotated with its refresh token, once.
    let user = h.user(2).external_id;
    let me = || async {
        client()
            .get(url(&h, "/api/v1/expense/me"))
            .header("Tokenbroker-User", &user)
            .send()
            .await
            .unwrap()
    };
    assert_eq!(me().await.status(), 200);
    let token = h.user_token(&user).await.unwrap().access_token;
    assert!(h.sandbox.revoke_access_token(&token));
    let before = h.sandbox.stats();
    let (status, body) = json(me().await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["externalSourceId"], user.as_str());
    let after = h.sandbox.stats();
    assert_eq!(after.refresh_token - before.refresh_token, 1);
    assert_eq!(after.upstream_requests() - before.upstream_requests(), 1);

    // A body past the 1 MiB kept for a retry has gone: the 401 comes back, saying the
    // token was rotated, and the caller's next request carries the new one. (Another
    // user: the token just rotated above is not rotated again within
    // renewal.min_rotation_interval.)
    let user = h.user(4).external_id;
    let token = h.user_token(&user).await.unwrap().access_token;
    assert!(h.sandbox.revoke_access_token(&token));
    let (tx, body) = fed_body();
    let feeding = tokio::spawn(async move {
        for _ in 0..24 {
            if tx.send(vec![1u8; 64 * 1024]).await.is_err() {
                return;
            }
        }
    });
    let refused = client()
        .post(url(&h, "/api/v1/expense/receipts"))
        .header("Tokenbroker-User", &user)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["tokenbroker-token-rotated"], "true");
    feeding.abort();
    let (status, me) = json(
        client()
            .get(url(&h, "/api/v1/expense/me"))
            .header("Tokenbroker-User", &user)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, me["externalSourceId"].as_str()),
        (200, Some(user.as_str()))
    );
    assert_ne!(h.user_token(&user).await.unwrap().access_token, token);
    h.stop().await;
}

#[tokio::test]
async fn a_thousand_requests_on_one_revoked_token_cost_one_rotation() {
    let h = start("").await;
    let client = client();
    let get = || client.get(url(&h, "/api/v1/admin/organization")).send();
    assert_eq!(get().await.unwrap().status(), 200);
    let token = h.org_token().await.unwrap().access_token;
    assert!(h.sandbox.revoke_access_token(&token));
    let before = h.sandbox.stats();
    let answers = futures::future::join_all((0..1000).map(|_| get())).await;
    let statuses: Vec<u16> = answers
        .into_iter()
        .map(|a| a.map(|r| r.status().as_u16()).unwrap_or(0))
        .collect();
    assert!(
        statuses.iter().all(|&s| s == 200),
        "not all 200: {:?}",
        &statuses[..10]
    );
    let after = h.sandbox.stats();
    assert_eq!(
        after.upstream_requests() - before.upstream_requests(),
        1,
        "1,000 callers who saw the same 401 cost one rotation"
    );
    assert_eq!(after.refresh_token_reuse, 0);
    h.stop().await;
}

/// A body fed by the test, a chunk at a time, of no declared length.
fn fed_body() -> (tokio::sync::mpsc::Sender<Vec<u8>>, reqwest::Body) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    (tx, reqwest::Body::wrap_stream(stream))
}

#[tokio::test]
async fn a_large_upload_streams_to_the_platform_before_it_ends() {
    let h = start("").await;
    let (tx, body) = fed_body();
    let upload = tokio::spawn(
        client()
            .post(url(&h, "/api/v1/expense/receipts"))
            .header("Tokenbroker-User", h.user(3).external_id)
            .body(body)
            .send(),
    );
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut digest = sha2::Sha256::new();
    // 3 MiB, past the 1 MiB kept for a retry: the platform has it before the caller ends.
    for _ in 0..48 {
        tx.send(chunk.clone()).await.unwrap();
        digest.update(&chunk);
    }
    common::wait_for(
        "the platform to receive 2 MiB while the body is open",
        async || h.sandbox.stats().upload_bytes >= 2 * 1024 * 1024,
    )
    .await;
    for _ in 0..48 {
        tx.send(chunk.clone()).await.unwrap();
        digest.update(&chunk);
    }
    drop(tx);
    let (status, body) = json(upload.await.unwrap().unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bytes"], 6 * 1024 * 1024);
    assert_eq!(body["sha256"], hex::encode(digest.finalize()));
    assert_eq!(body["subject"], h.user(3).person_id.as_str());
    h.stop().await;
}

#[tokio::test]
async fn a_slow_answer_streams_as_it_comes_past_the_request_timeout() {
    // A 1 s timeout (not the default 30 s): an answer that takes 2.4 s in all, a line
    // every 0.6 s, is not cut, as the timeout bounds silence, not the whole answer.
    let h = start("request_timeout = \"1s\"").await;
    let mut answer = client()
        .get(url(&h, "/api/v1/expense/export?chunks=5&interval_ms=600"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let first = answer.chunk().await.unwrap().expect("a first line");
    assert_eq!(
        &first[..],
        b"{\"line\":0}\n",
        "the first line alone: nothing held back"
    );
    let mut rest = Vec::new();
    while let Some(chunk) = answer.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8(rest).unwrap().lines().count(), 4);
    h.stop().await;
}

/// An upstream that shows what it received: `/echo` answers the request's headers (and
/// sets two cookies and a hop-by-hop header), `/redirect` a 302, `/big` 4 KiB, `/slow`
/// nothing for 3 s, `/drip` three lines half a second apart, `/always-401` a 401 to any
/// token, `/flood` 32 MiB as fast as it is read.
async fn echo_server() -> SocketAddr {
    async fn echo(headers: HeaderMap) -> Response {
        let mut seen = serde_json::Map::new();
        for name in headers.keys() {
            let values: Vec<Value> = headers
                .get_all(name)
                .iter()
                .map(|v| Value::from(v.to_str().unwrap_or("?")))
                .collect();
            seen.insert(name.to_string(), Value::from(values));
        }
        let mut response = Json(Value::Object(seen)).into_response();
        let out = response.headers_mut();
        out.append(header::SET_COOKIE, "a=1; Path=/; HttpOnly".parse().unwrap());
        out.append(header::SET_COOKIE, "b=2; Secure".parse().unwrap());
        out.insert("keep-alive", "timeout=5".parse().unwrap());
        response
    }
    let app = Router::new()
        .route("/echo", any(echo))
        .route(
            "/redirect",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/echo")]) }),
        )
        .route("/big", get(|| async { vec![b'x'; 4096] }))
        .route(
            "/always-401",
            get(|| async { (StatusCode::UNAUTHORIZED, "not for this token") }),
        )
        .route(
            "/flood",
            get(|| async {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let chunks = futures::stream::iter(
                    (0..512).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                axum::body::Body::from_stream(chunks)
            }),
        )
        .route(
            "/drip",
            get(|| async {
                let lines = futures::stream::unfold(0, |i| async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Some((Ok::<_, std::io::Error>(format!("{i}\n")), i + 1))
                });
                axum::body::Body::from_stream(lines)
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Waits (saying `what`) until a request to the echo server gets a place and a 200.
async fn place_comes_back(h: &Harness, what: &str) {
    common::wait_for(what, async || {
        client().get(url(h, "/echo")).send().await.unwrap().status() == 200
    })
    .await;
}

/// A broker whose org's API is the echo server, with `extra` keys in `[proxy]`.
async fn start_echo(extra: &str) -> Harness {
    LazyLock::force(&LOG);
    let echo = format!("http://{}", echo_server().await);
    let extra = extra.to_owned();
    Harness::with(
        sandbox_config(),
        move |s| proxy_toml(s, &extra, Some(&echo)),
        |_| None,
    )
    .await
}

#[tokio::test]
async fn only_the_brokers_bearer_reaches_the_platform_and_its_answer_comes_back_whole() {
    let h = start_echo("").await;
    let answer = client()
        .post(url(&h, "/echo?q=1"))
        .header("Authorization", "Bearer the-callers-own")
        .header("Proxy-Authorization", "Bearer not-for-the-platform")
        .header("Tokenbroker-Org", "acme")
        .header("Tokenbroker-Anything", "x")
        .header("Connection", "x-hop")
        .header("X-Hop", "dropped")
        .header("X-Request-Id", "r-1")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let cookies: Vec<_> = answer
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["a=1; Path=/; HttpOnly", "b=2; Secure"]);
    assert!(!answer.headers().contains_key("keep-alive"));
    let seen: Value = answer.json().await.unwrap();
    let token = h.org_token().await.unwrap().access_token;
    assert_eq!(
        seen["authorization"],
        serde_json::json!([format!("Bearer {token}")])
    );
    assert_eq!(seen["x-request-id"], serde_json::json!(["r-1"]));
    for gone in [
        "proxy-authorization",
        "tokenbroker-org",
        "tokenbroker-anything",
        "x-hop",
    ] {
        assert!(
            seen.get(gone).is_none(),
            "{gone} reached the platform: {seen}"
        );
    }
    // A redirect comes back as it is, never followed.
    let redirect = client().get(url(&h, "/redirect")).send().await.unwrap();
    assert_eq!(redirect.status(), 302);
    assert_eq!(redirect.headers()[header::LOCATION], "/echo");
    h.stop().await;
}

#[tokio::test]
async fn sizes_are_bounded_with_clear_errors() {
    let h = start_echo(
        "max_retry_body_bytes = 1024\nmax_request_bytes = 65536\nmax_response_bytes = 1024",
    )
    .await;
    let error = |answer: reqwest::Response| async {
        let (status, body) = json(answer).await;
        (status, body["error"].as_str().unwrap_or("").to_owned())
    };
    // Declared too large: refused before a byte goes on.
    let declared = client()
        .post(url(&h, "/echo"))
        .body(vec![0u8; 65537])
        .send()
        .await
        .unwrap();
    assert_eq!(error(declared).await, (413, "request_too_large".into()));
    // Streamed, of no declared length, past the limit: cut off and refused.
    let (tx, body) = fed_body();
    let sent = tokio::spawn(async move {
        for _ in 0..20 {
            if tx.send(vec![0u8; 8192]).await.is_err() {
                break;
            }
        }
    });
    let streamed = client()
        .post(url(&h, "/echo"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(error(streamed).await, (413, "request_too_large".into()));
    sent.await.unwrap();
    // Within the limits, past the retry limit: it goes.
    let fits = client()
        .post(url(&h, "/echo"))
        .body(vec![0u8; 60_000])
        .send()
        .await
        .unwrap();
    assert_eq!(fits.status(), 200);
    // An answer declared larger than max_response_bytes.
    let big = client().get(url(&h, "/big")).send().await.unwrap();
    assert_eq!(error(big).await, (502, "response_too_large".into()));
    h.stop().await;
}

#[tokio::test]
async fn a_silent_platform_is_a_504_and_a_full_proxy_a_503() {
    let h = start_echo("request_timeout = \"1s\"\nmax_concurrent_requests = 1").await;
    let slow = client().get(url(&h, "/slow")).send().await.unwrap();
    let (status, body) = json(slow).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (504, Some("upstream_timeout")),
        "{body}"
    );
    // One request in progress (its answer still streaming) fills the proxy.
    let mut first = client().get(url(&h, "/drip")).send().await.unwrap();
    let second = client().get(url(&h, "/echo")).send().await.unwrap();
    assert_eq!(second.headers()[header::RETRY_AFTER], "1");
    let (status, body) = json(second).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("busy")),
        "{body}"
    );
    while first.chunk().await.unwrap().is_some() {}
    drop(first);
    place_comes_back(&h, "the place to come back").await;
    h.stop().await;
}

#[tokio::test]
async fn callers_authenticate_with_a_proxy_authorization_key_or_their_uid() {
    LazyLock::force(&LOG);
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let uid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dir.path()).unwrap().uid()
    };
    let callers = format!(
        "[[callers]]\nname = \"erp\"\napi_key_sha256 = [\"{}\"]\nunix_uids = [{uid}]\norgs = [\"acme\"]\npermissions = [\"proxy\"]\n\n[[callers]]\nname = \"payroll\"\napi_key_sha256 = [\"{}\"]\norgs = [\"acme\"]\npermissions = [\"org_token\"]\n",
        tokenbroker::auth::api_key_hash("erp-key"),
        tokenbroker::auth::api_key_hash("payroll-key"),
    );
    let h = Harness::with(
        sandbox_config(),
        move |s| format!("{callers}\n{}", proxy_toml(s, "", None)),
        |_| None,
    )
    .await;
    let get = |key: Option<&str>| {
        let mut request = client().get(url(&h, "/api/v1/admin/organization"));
        if let Some(key) = key {
            request = request.header("Proxy-Authorization", format!("Bearer {key}"));
        }
        request.send()
    };
    let none = get(None).await.unwrap();
    assert!(none.headers().contains_key(header::PROXY_AUTHENTICATE));
    let (status, body) = json(none).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (407, Some("unauthenticated"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Proxy-Authorization"),
        "{body}"
    );
    let (status, _) = json(get(Some("wrong")).await.unwrap()).await;
    assert_eq!(status, 407);
    let (status, body) = json(get(Some("payroll-key")).await.unwrap()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("permission_denied"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("proxy"),
        "{body}"
    );
    let (status, body) = json(get(Some("erp-key")).await.unwrap()).await;
    assert_eq!((status, body["organization"].as_str()), (200, Some("acme")));
    // As an HTTP proxy (`HTTP_PROXY`): a request in absolute form, whatever its host, goes
    // to the org's api_url, the key in the standard proxy credential header.
    let as_proxy = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(format!("http://{}", h.proxy.unwrap()))
                .unwrap()
                .custom_http_auth("Bearer erp-key".parse().unwrap()),
        )
        .build()
        .unwrap();
    let (status, body) = json(
        as_proxy
            .get("http://expense.invalid/api/v1/admin/organization")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["organization"].as_str()), (200, Some("acme")));
    h.stop().await;

    // The same callers with the proxy on a Unix socket: the uid names the caller.
    let callers = format!(
        "[[callers]]\nname = \"erp\"\nunix_uids = [{uid}]\norgs = [\"acme\"]\npermissions = [\"proxy\"]\n"
    );
    let socket_text = socket.display().to_string();
    let h = Harness::with(
        sandbox_config(),
        move |s| {
            format!("{callers}\n{}", proxy_toml(s, "", None)).replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"unix://{socket_text}\""),
            )
        },
        |_| None,
    )
    .await;
    common::wait_for("the proxy's socket", async || socket.exists()).await;
    let answer = unix_get(&socket, "/api/v1/admin/organization").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"organization\":\"acme\""), "{answer}");
    h.stop().await;
}

/// A GET over the Unix socket at `path`, by hand (HTTP/1.1, `Connection: close`): the
/// whole answer as text.
async fn unix_get(socket: &std::path::Path, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: tokenbroker\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn over_tls_a_client_certificate_names_the_caller_and_http2_is_spoken() {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    LazyLock::force(&LOG);
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf = |name: &str| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![if name.contains("://") {
            SanType::URI(name.try_into().unwrap())
        } else {
            SanType::DnsName(name.try_into().unwrap())
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let (cert, key) = leaf("localhost");
    let tls = format!(
        "[proxy.tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
        file("server.pem", &cert),
        file("server.key", &key),
        file("ca.pem", &ca.pem()),
    );
    let callers = "[[callers]]\nname = \"erp\"\ntls_names = [\"spiffe://acme.example/erp\"]\norgs = [\"acme\"]\npermissions = [\"proxy\"]\n";
    let h = Harness::with(
        sandbox_config(),
        move |s| {
            let text = proxy_toml(s, "", None);
            // [proxy.tls] right after [proxy]'s keys, before the org.
            let text = text.replacen("\n\n[orgs.acme]", &format!("\n{tls}\n[orgs.acme]"), 1);
            format!("{callers}\n{text}")
        },
        |_| None,
    )
    .await;
    let addr = h.proxy.unwrap();
    let client_with = |identity: Option<(String, String)>| {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
            .resolve("localhost", addr);
        if let Some((cert, key)) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    };
    let url = format!(
        "https://localhost:{}/api/v1/admin/organization",
        addr.port()
    );
    let answer = client_with(Some(leaf("spiffe://acme.example/erp")))
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), reqwest::Version::HTTP_2, "h2 by ALPN");
    let (status, body) = json(answer).await;
    assert_eq!((status, body["organization"].as_str()), (200, Some("acme")));
    let (status, body) = json(
        client_with(Some(leaf("spiffe://acme.example/stranger")))
            .get(&url)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 407, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spiffe://acme.example/stranger"),
        "{body}"
    );
    let (status, _) = json(client_with(None).get(&url).send().await.unwrap()).await;
    assert_eq!(status, 407, "no certificate, no key: unauthenticated");
    h.stop().await;
}

#[tokio::test]
async fn connect_is_refused_saying_to_send_plain_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start("").await;
    let mut stream = tokio::net::TcpStream::connect(h.proxy.unwrap())
        .await
        .unwrap();
    stream
        .write_all(
            b"CONNECT expense.findity.com:443 HTTP/1.1\r\nHost: expense.findity.com:443\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = vec![0u8; 2048];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(answer.contains("HTTP_PROXY"), "{answer}");
    h.stop().await;
}

#[tokio::test]
async fn a_reload_sends_an_orgs_requests_to_its_new_api_url() {
    let h = start("").await;
    assert_eq!(
        client()
            .get(url(&h, "/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        404,
        "the sandbox has no /echo"
    );
    let echo = format!("http://{}", echo_server().await);
    let text = proxy_toml(&h.sandbox, "", Some(&echo));
    let secret = h.sandbox.config().orgs[0].client_secret.clone();
    let mut config = tokenbroker::config::Config::parse(
        &text,
        &|name| (name == SECRET_ENV).then(|| secret.clone()),
        std::path::Path::new("."),
    )
    .unwrap();
    // As the harness runs it.
    config.cache.prefetch_org_tokens = false;
    let restart = h.reloader.apply(config).await;
    assert!(restart.is_empty(), "api_url needs no restart: {restart:?}");
    // A [proxy] bound changed: named as needing a restart.
    let bounded = text.replacen(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nmax_concurrent_requests = 5",
        1,
    );
    let secret = h.sandbox.config().orgs[0].client_secret.clone();
    let mut changed = tokenbroker::config::Config::parse(
        &bounded,
        &|name| (name == SECRET_ENV).then(|| secret.clone()),
        std::path::Path::new("."),
    )
    .unwrap();
    changed.cache.prefetch_org_tokens = false;
    assert_eq!(
        h.reloader.apply(changed).await,
        ["[proxy] (but the orgs' api_url)"]
    );
    let seen: Value = client()
        .get(url(&h, "/echo"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        seen["authorization"][0]
            .as_str()
            .unwrap()
            .starts_with("Bearer ")
    );
    h.stop().await;
}

#[tokio::test]
async fn a_401_on_a_token_just_rotated_is_returned_without_another_rotation() {
    let h = start_echo("").await;
    let get = || client().get(url(&h, "/always-401")).send();
    h.org_token().await.unwrap();
    let before = h.sandbox.stats().upstream_requests();
    // The first 401 rotates the token and sends again; the answer is the platform's 401.
    let first = get().await.unwrap();
    assert_eq!(first.status(), 401);
    assert_eq!(first.headers()["tokenbroker-token-rotated"], "true");
    // The token it got was rotated for a caller moments ago: its 401 is about the path,
    // not the token, and costs no grant.
    for _ in 0..5 {
        let again = get().await.unwrap();
        assert_eq!(again.status(), 401);
        assert!(!again.headers().contains_key("tokenbroker-token-rotated"));
    }
    let rotations = h.sandbox.stats().upstream_requests() - before;
    assert_eq!(rotations, 1, "six 401s in a row, one rotation");
    h.stop().await;
}

#[tokio::test]
async fn an_upload_longer_than_the_timeout_goes_while_it_keeps_moving() {
    // A 1 s timeout (not the default 30 s): an upload that takes 2.5 s in all, a chunk
    // every 0.25 s, is never silent for a second, so it goes.
    let h = start("request_timeout = \"1s\"").await;
    let (tx, body) = fed_body();
    let feeding = tokio::spawn(async move {
        for _ in 0..10 {
            tx.send(vec![7u8; 256 * 1024]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let (status, body) = json(
        client()
            .post(url(&h, "/api/v1/expense/receipts"))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    feeding.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bytes"], 10 * 256 * 1024);
    // A caller that goes silent mid-body past the timeout: 408, its own fault.
    let (tx, body) = fed_body();
    tx.send(vec![1u8; 2 * 1024 * 1024]).await.unwrap();
    let (status, body) = json(
        client()
            .post(url(&h, "/api/v1/expense/receipts"))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (408, Some("request_timeout")),
        "{body}"
    );
    drop(tx);
    h.stop().await;
}

#[tokio::test]
async fn a_caller_that_stops_reading_or_sending_headers_gives_its_place_back() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = start_echo("request_timeout = \"1s\"\nmax_concurrent_requests = 1").await;
    let proxy = h.proxy.unwrap();
    // Asks for 32 MiB and reads none of it: the place is held only while it reads.
    let mut stalled = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stalled
        .write_all(b"GET /flood HTTP/1.1\r\nHost: tokenbroker\r\n\r\n")
        .await
        .unwrap();
    place_comes_back(&h, "the stalled reader's place to come back").await;
    drop(stalled);
    // Headers that never end: the connection is closed at the timeout.
    let mut slow = tokio::net::TcpStream::connect(proxy).await.unwrap();
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: tokenbroker\r\nX-Slow: 1")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a connection whose headers never end is closed"
    );
    h.stop().await;
}
