//! WatchTokens at scale and at the edges: ordering, announcements of lost tokens, keeping
//! watched users warm, limits, release of closed streams, shutdown, thousands of subscribers.

mod common;

use std::time::Duration;

use common::{Harness, lifetime, next, retry, sandbox_config, wait_for, watch, watch_request};
use futures::future::join_all;
use tokenbroker::{
    proto::{
        GetUserTokenRequest, RefreshRequest, TokenEventReason,
        token_service_client::TokenServiceClient,
    },
    sandbox::{Fault, FaultRule, Target},
};
use tonic::Code;

/// Waits until the broker's counters show `what` (see `common::wait_for`).
async fn until(h: &Harness, what: &str, check: impl Fn(&tokenbroker::broker::BrokerStats) -> bool) {
    wait_for(what, async || check(&h.broker.stats())).await;
}

#[tokio::test]
async fn generations_only_grow_and_a_reconnect_gets_the_current_token_first() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    let mut stream = watch(&h.client, &[]).await;
    let first = next(&mut stream).await;
    assert_eq!(
        (first.reason(), first.org.as_str(), first.user_id.as_str()),
        (TokenEventReason::Initial, "acme", "")
    );
    let mut current = first.token.unwrap();
    let mut last = current.generation;
    for _ in 0..5 {
        let refresh = RefreshRequest {
            org: "acme".into(),
            stale_access_token: current.access_token.clone(),
            ..Default::default()
        };
        let answer = h.client.clone().refresh(refresh).await.unwrap();
        current = answer.into_inner().token.unwrap();
    }
    // A slow reader may skip generations, never go back.
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_millis(200), stream.message())
        .await
        .map(|r| r.transpose())
    {
        let generation = m.token.unwrap().generation;
        assert!(generation > last, "{generation} after {last}");
        last = generation;
    }
    assert_eq!(last, 6);
    drop(stream);
    let mut again = watch(&h.client, &[]).await;
    let m = next(&mut again).await;
    assert_eq!(
        (m.reason(), m.token.unwrap().generation),
        (TokenEventReason::Initial, 6)
    );
}

#[tokio::test]
async fn a_removed_user_is_announced_revoked_when_its_token_expires() {
    let h = Harness::with_extra(
        lifetime(2),
        "[renewal]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\n",
    )
    .await;
    let (gone, kept) = (h.user(1).person_id, h.user(2).person_id);
    let mut stream = watch(&h.client, &[gone.clone(), kept.clone()]).await;
    next(&mut stream).await;
    next(&mut stream).await;
    assert!(h.sandbox.remove_user("acme", &gone));
    let mut revoked = None;
    for _ in 0..20 {
        let m = next(&mut stream).await;
        if m.reason() == TokenEventReason::Revoked {
            revoked = Some(m);
            break;
        }
        assert_eq!(m.user_id, kept, "only the kept user's token is renewed");
    }
    let m = revoked.expect("a REVOKED message");
    assert_eq!(
        (m.user_id.as_str(), m.org.as_str()),
        (gone.as_str(), "acme")
    );
    assert!(m.token.is_none());
    assert!(m.detail.contains("does not know user"), "{}", m.detail);
    // The other key goes on.
    let m = next(&mut stream).await;
    assert_eq!(
        (m.user_id.as_str(), m.reason()),
        (kept.as_str(), TokenEventReason::Renewed)
    );
}

#[tokio::test]
async fn revoked_credentials_and_an_outage_are_announced() {
    let h = Harness::with_extra(lifetime(2), "[renewal]\nbackoff_base = \"50ms\"\nbackoff_max = \"200ms\"\ncredentials_retry = \"300ms\"\n").await;
    let mut stream = watch(&h.client, &[]).await;
    next(&mut stream).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Status { status: 503 },
        Target::Any,
    ));
    let m = loop {
        let m = next(&mut stream).await;
        if m.token.is_none() {
            break m;
        }
    };
    assert_eq!(m.reason(), TokenEventReason::Unavailable);
    assert!(m.detail.contains("503"), "{}", m.detail);
    // When the platform is back, the watcher gets a token again without asking.
    h.sandbox.clear_faults();
    let m = next(&mut stream).await;
    assert!(m.token.is_some());

    assert!(h.sandbox.revoke_client("acme-client"));
    let m = loop {
        let m = next(&mut stream).await;
        if m.token.is_none() {
            break m;
        }
    };
    assert_eq!(m.reason(), TokenEventReason::Revoked);
    assert!(m.detail.contains("invalid_client"), "{}", m.detail);
}

#[tokio::test]
async fn watching_keeps_a_user_token_warm_until_the_last_watcher_leaves() {
    let h = Harness::with_extra(lifetime(2), "[cache]\nuser_idle_timeout = \"1s\"\n").await;
    let user = h.user(3).external_id;
    let mut a = watch(&h.client, std::slice::from_ref(&user)).await;
    let mut b = watch(&h.new_client().await, std::slice::from_ref(&user)).await;
    next(&mut a).await;
    next(&mut b).await;
    // Idle past the 1 s timeout but watched: renewed (two-second tokens, a new one about
    // every second), not dropped.
    for _ in 0..2 {
        assert!(next(&mut b).await.token.is_some(), "a renewed token");
    }
    assert_eq!(h.broker.stats().user_tokens, 1);
    drop(a);
    until(&h, "the first watcher gone", |s| s.watchers == 1).await;
    // Past the idle timeout again, with one watcher left.
    for _ in 0..2 {
        assert!(next(&mut b).await.token.is_some(), "a renewed token");
    }
    assert_eq!(h.broker.stats().user_tokens, 1, "one watcher is left");
    drop(b);
    until(&h, "dropped a second after the last watcher left", |s| {
        s.user_tokens == 0 && s.watchers == 0
    })
    .await;
}

#[tokio::test]
async fn limits_answer_resource_exhausted() {
    let h = Harness::with_extra(
        sandbox_config(),
        "[watch]\nmax_keys_per_stream = 3\nmax_streams_per_connection = 2\n",
    )
    .await;
    let users: Vec<String> = (1..=4).map(|i| h.user(i).person_id).collect();
    let status = h
        .client
        .clone()
        .watch_tokens(watch_request(&users))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("watch.max_keys_per_stream"),
        "{}",
        status.message()
    );

    let client = h.new_client().await;
    let one = watch(&client, &users[..3]).await;
    let _two = watch(&client, &[]).await;
    let status = client
        .clone()
        .watch_tokens(watch_request(&[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("watch.max_streams_per_connection"),
        "{}",
        status.message()
    );
    // Another connection has its own budget; a closed stream frees its place.
    watch(&h.new_client().await, &[]).await;
    drop(one);
    retry("a stream in the closed one's place", async || {
        client.clone().watch_tokens(watch_request(&[])).await
    })
    .await;
}

#[tokio::test]
async fn streams_and_watched_keys_are_bounded_across_connections() {
    let h = Harness::with_extra(
        sandbox_config(),
        "[watch]\nmax_streams = 3\nmax_watched_keys = 5\n",
    )
    .await;
    let users: Vec<String> = (1..=3).map(|i| h.user(i).person_id).collect();
    // Each stream on a connection of its own: the bounds are the server's, not a
    // connection's.
    let a = h.new_client().await;
    let first = watch(&a, &users).await;
    let b = h.new_client().await;
    let status = b
        .clone()
        .watch_tokens(watch_request(&users))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("watch.max_watched_keys"),
        "{}",
        status.message()
    );
    let _org_a = watch(&b, &[]).await;
    let c = h.new_client().await;
    let _org_b = watch(&c, &[]).await;
    let status = h
        .new_client()
        .await
        .watch_tokens(watch_request(&[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("watch.max_streams"),
        "{}",
        status.message()
    );
    // Closing a stream gives its places back.
    drop(first);
    let d = h.new_client().await;
    retry("a stream in the closed one's place", async || {
        d.clone().watch_tokens(watch_request(&users[..2])).await
    })
    .await;
}

#[tokio::test]
async fn health_watch_streams_are_bounded_per_connection_and_in_all() {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let h = Harness::with_extra(
        sandbox_config(),
        "[watch]\nmax_health_streams_per_connection = 2\nmax_health_streams = 3\n",
    )
    .await;
    let health = || async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .connect()
            .await?;
        Ok::<_, tonic::transport::Error>(HealthClient::new(channel))
    };
    let request = || HealthCheckRequest {
        service: String::new(),
    };
    let mut a = health().await.unwrap();
    let first = a.watch(request()).await.unwrap().into_inner();
    let _second = a.watch(request()).await.unwrap().into_inner();
    let status = a.watch(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status
            .message()
            .contains("watch.max_health_streams_per_connection"),
        "{}",
        status.message()
    );
    let mut b = health().await.unwrap();
    let _third = b.watch(request()).await.unwrap().into_inner();
    let status = b.watch(request()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("watch.max_health_streams"),
        "{}",
        status.message()
    );
    // Check is never limited; a closed Watch frees its places.
    b.check(request()).await.expect("Check answers");
    drop(first);
    retry("a Watch in the closed one's place", async || {
        b.clone().watch(request()).await
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_streams_opened_and_closed_leave_no_subscriber() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    let users: Vec<String> = (1..=5).map(|i| h.user(i).person_id).collect();
    let clients = [
        h.client.clone(),
        h.new_client().await,
        h.new_client().await,
        h.new_client().await,
    ];
    for round in 0..100 {
        let opens = (0..100).map(|i| {
            let client = clients[i % clients.len()].clone();
            let keys = if i % 2 == 0 {
                vec![]
            } else {
                vec![users[(round + i) % users.len()].clone()]
            };
            async move {
                let mut stream = watch(&client, &keys).await;
                next(&mut stream).await;
            }
        });
        join_all(opens).await;
    }
    until(&h, "every closed stream released", |s| {
        s.watch_streams == 0 && s.watchers == 0
    })
    .await;
    let stats = h.broker.stats();
    assert_eq!(stats.user_tokens, 5);
}

#[tokio::test]
async fn two_thousand_subscribers_over_five_connections_all_get_a_forced_rotation() {
    let h = Harness::with_extra(sandbox_config(), "").await;
    let mut clients = vec![h.client.clone()];
    for _ in 0..4 {
        clients.push(h.new_client().await);
    }
    let streams = join_all((0..2000).map(|i| {
        let client = clients[i % clients.len()].clone();
        async move {
            let mut stream = watch(&client, &[]).await;
            let initial = next(&mut stream).await;
            assert_eq!(initial.token.unwrap().generation, 1);
            stream
        }
    }))
    .await;
    assert_eq!(h.broker.stats().watch_streams, 2000);
    let rotated = h
        .client
        .clone()
        .refresh(RefreshRequest {
            org: "acme".into(),
            stale_access_token: h.org_token().await.unwrap().access_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let received = join_all(
        streams
            .into_iter()
            .map(|mut s| async move { next(&mut s).await }),
    )
    .await;
    assert!(
        received
            .iter()
            .all(|m| m.reason() == TokenEventReason::Forced && m.token.as_ref() == Some(&rotated))
    );
    assert_eq!(h.sandbox.stats().upstream_requests(), 2);
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable_and_lets_calls_finish() {
    let h = Harness::with_extra(sandbox_config(), "[server]\ndrain_timeout = \"5s\"\n").await;
    let mut stream = watch(&h.client, &[]).await;
    next(&mut stream).await;
    h.sandbox.inject(FaultRule::always(
        Fault::Latency { millis: 600 },
        Target::AuthorizationGrant,
    ));
    let mut client = h.new_client().await;
    let user = h.user(1).person_id;
    let call = tokio::spawn(async move {
        client
            .get_user_token(GetUserTokenRequest {
                org: "acme".into(),
                user_id: user,
                ..Default::default()
            })
            .await
    });
    // The call is in (waiting on the slow grant) before the shutdown begins.
    until(&h, "the call waits on the platform", |s| {
        s.waiting_callers == 1
    })
    .await;
    let stopped = tokio::spawn(h.stop_and_keep());
    let status = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    let answer = call.await.unwrap().expect("the call in flight finished");
    assert!(answer.into_inner().token.is_some());
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), stopped)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn keepalive_finds_a_dead_client_and_releases_its_streams() {
    let h = Harness::with_extra(
        sandbox_config(),
        "[server]\nkeepalive_interval = \"200ms\"\nkeepalive_timeout = \"200ms\"\n",
    )
    .await;
    // A client behind a forwarder that can go silent, as a crashed host or a cut cable would.
    let relay = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let frozen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let broker_addr = h.addr;
    let freeze = std::sync::Arc::clone(&frozen);
    tokio::spawn(async move {
        let (client, _) = relay.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(broker_addr).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                    mut to: tokio::net::tcp::OwnedWriteHalf,
                    freeze: std::sync::Arc<std::sync::atomic::AtomicBool>| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if freeze.load(std::sync::atomic::Ordering::SeqCst) {
                    // Silent: nothing passes, nothing is closed.
                    std::future::pending::<()>().await;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        };
        let up = tokio::spawn(pump(cr, sw, std::sync::Arc::clone(&freeze)));
        let down = tokio::spawn(pump(sr, cw, freeze));
        let _ = tokio::join!(up, down);
    });
    let client = TokenServiceClient::connect(format!("http://{relay_addr}"))
        .await
        .unwrap();
    let mut stream = watch(&client, &[]).await;
    next(&mut stream).await;
    assert_eq!(h.broker.stats().watch_streams, 1);
    frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    until(&h, "the dead client's stream released", |s| {
        s.watch_streams == 0 && s.watchers == 0
    })
    .await;
}
