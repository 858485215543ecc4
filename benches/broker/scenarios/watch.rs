//! WatchTokens: a forced rotation fanned out to many subscribers, the memory of watched keys and of health Watch streams.

use crate::*;

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let (b, _d) = broker(platform, "").await_ready().await;
    let chans = channels(&b.addr, size.connections).await;
    let per = size.subscribers / size.connections;
    let mut streams = Vec::with_capacity(size.subscribers);
    for chunk in 0..size.subscribers / 500 {
        let opened = join_all((0..500).map(|i| {
            let mut c =
                TokenServiceClient::new(chans[(chunk * 500 + i) / per % chans.len()].clone());
            async move {
                let mut s = c
                    .watch_tokens(WatchTokensRequest::default())
                    .await
                    .expect("subscribe")
                    .into_inner();
                s.message().await.expect("initial").expect("open");
                s
            }
        }))
        .await;
        streams.extend(opened);
    }
    // Each rotation measured as `rotation_delivered` (load.rs) says.
    let mut delivered = Vec::with_capacity(size.subscribers * size.rotations);
    let mut missing = 0;
    let (broker_cpu, client_cpu) = (b.cpu_ms(), cpu_ms("/proc/self/stat"));
    for _ in 0..size.rotations {
        let arrived_in = rotation_delivered(&mut streams, &chans[0]).await;
        missing += size.subscribers - arrived_in.len();
        delivered.extend(arrived_in);
    }
    let broker_cpu = b.cpu_ms() - broker_cpu;
    let client_cpu = cpu_ms("/proc/self/stat") - client_cpu;
    let per_message = |ms: f64| ms * 1000.0 / (size.subscribers * size.rotations) as f64;
    eprintln!(
        "fan-out CPU per message delivered: broker {:.1} us, benchmark client {:.1} us",
        per_message(broker_cpu),
        per_message(client_cpu)
    );
    delivered.sort_unstable();
    let p99_ms = percentile(&delivered, 0.99) / 1000.0;
    table.row(
        &format!(
            "{} WatchTokens subscribers over {} connections, {} rotations",
            size.subscribers, size.connections, size.rotations
        ),
        format!("p99 {p99_ms:.1} ms, {missing} missing"),
        "p99<=100ms, 0",
        p99_ms <= 100.0 && missing == 0,
    );
    figures.insert("watch_fanout".into(), json!({"subscribers": size.subscribers, "connections": size.connections, "p50_ms": percentile(&delivered, 0.5) / 1000.0, "p99_ms": p99_ms, "max_ms": delivered.last().copied().unwrap_or(0) as f64 / 1000.0, "missing": missing, "rotations": size.rotations, "broker_cpu_us_per_message": per_message(broker_cpu), "client_cpu_us_per_message": per_message(client_cpu)}));
    drop(streams);
    drop(chans);
    drop(b);

    // Watched keys' memory: streams of 1,000 keys each (the per-stream maximum) on one
    // connection, whose client never reads; then all closed, and the memory back.
    let (b, _d) = broker(platform, "").await_ready().await;
    let chans = channels(&b.addr, 1).await;
    let keys_per_stream = size.users_held.min(1_000);
    let ids: Vec<String> = (1..=keys_per_stream)
        .map(|n| format!("EMP-{n:05}"))
        .collect();
    // The keys' tokens first, so that the figure is the streams' alone.
    let mut c = TokenServiceClient::new(chans[0].clone());
    for id in &ids {
        c.get_user_token(GetUserTokenRequest {
            user_id: id.clone(),
            ..Default::default()
        })
        .await
        .expect("user token");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = b.rss_mib();
    let n_streams = if size.quick { 10 } else { 100 };
    let mut silent = Vec::with_capacity(n_streams);
    for _ in 0..n_streams {
        silent.push(
            c.watch_tokens(WatchTokensRequest {
                user_ids: ids.clone(),
                ..Default::default()
            })
            .await
            .expect("watch")
            .into_inner(),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let watching = b.rss_mib();
    drop(silent);
    drop(c);
    drop(chans);
    // jemalloc returns freed pages after its decay time (10 s by default).
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = b.rss_mib();
    let keys = (n_streams * keys_per_stream) as f64;
    let per_key = (watching - before) * 1024.0 * 1024.0 / keys;
    let kept = (after - before) / (watching - before).max(0.001);
    table.row(
        &format!("{n_streams} WatchTokens streams x {keys_per_stream} keys, client never reads: memory per watched key; left 15 s after close"),
        format!("{per_key:.0} B/key ({before:.1} -> {watching:.1} MiB); {after:.1} MiB after, {:.0} % left", kept * 100.0),
        "(context); <= 30 % left",
        kept <= 0.3,
    );
    figures.insert(
        "watch_memory".into(),
        json!({"streams": n_streams, "keys_per_stream": keys_per_stream, "before_mib": before, "watching_mib": watching, "after_close_mib": after, "bytes_per_key": per_key}),
    );

    // Health Watch streams: 16 a connection (the per-connection default).
    let conns = if size.quick { 4 } else { 64 };
    let hchans = channels(&b.addr, conns).await;
    let before = b.rss_mib();
    let mut health = Vec::new();
    for ch in &hchans {
        for _ in 0..16 {
            health.push(
                HealthClient::new(ch.clone())
                    .watch(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("health watch")
                    .into_inner(),
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_stream = (b.rss_mib() - before) * 1024.0 * 1024.0 / health.len() as f64;
    table.row(
        &format!(
            "{} health Watch streams over {conns} connections: memory per stream",
            health.len()
        ),
        format!(
            "{per_stream:.0} B/stream; at the 10,000 bound {:.0} MiB",
            per_stream * 10_000.0 / 1024.0 / 1024.0
        ),
        "(context)",
        true,
    );
    figures.insert(
        "health_watch_memory".into(),
        json!({"streams": health.len(), "connections": conns, "bytes_per_stream": per_stream}),
    );
    drop(health);
    drop(hchans);
    drop(b);
}
