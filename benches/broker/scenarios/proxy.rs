//! The token-injecting proxy, at its defaults: a platform API call through the proxy
//! against the same call straight to the sandbox with a held token (64 callers over
//! HTTP/1.1 keep-alive, in interleaved phases of the same run), and the broker's memory
//! per request in progress (answers held open mid-stream).

use crate::*;

/// A broker with `[proxy]` on 127.0.0.1:0 and every other setting at its default, its
/// org's `api_url` the sandbox: the process, with `addr` the proxy's address.
fn proxy_broker(dir: &std::path::Path, sandbox: &Process) -> Process {
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n[orgs.demo]\ntoken_url = \"http://{0}/oauth/token\"\nauthorization_grant_url = \"http://{0}/oauth/authorization-grant\"\napi_url = \"http://{0}\"\nclient_id = \"demo-client\"\nclient_secret_env = \"DEMO_SECRET\"\n",
        sandbox.addr
    );
    broker_from(dir, &config, "token-injecting proxy listening")
}

/// `concurrency` callers doing `GET url` (with `token` as bearer, if given) for `length`.
async fn http_phase(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    length: Duration,
) -> Phase {
    let started = Instant::now();
    let end = started + length;
    let tasks = (0..concurrency).map(|_| {
        let (client, url) = (client.clone(), url.to_owned());
        let token = token.map(str::to_owned);
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            while Instant::now() < end {
                let t = Instant::now();
                let mut request = client.get(&url);
                if let Some(token) = &token {
                    request = request.bearer_auth(token);
                }
                let ok = match request.send().await {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                assert!(ok, "a request to {url} failed");
                latencies.push(t.elapsed().as_micros() as u64);
            }
            latencies
        })
    });
    let mut all = Vec::new();
    for latencies in join_all(tasks).await {
        all.extend(latencies.expect("a caller"));
    }
    Phase {
        calls: all.len() as u64,
        latencies: all,
        elapsed: started.elapsed(),
    }
}

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let proxy = proxy_broker(dir.path(), platform);
    let path = "/api/v1/admin/organization";
    let (direct_url, proxy_url) = (
        format!("http://{}{path}", platform.addr),
        format!("http://{}{path}", proxy.addr),
    );
    // What a service without the proxy holds: its own org token, from the sandbox.
    let token: Value = reqwest::Client::new()
        .post(format!("http://{}/oauth/token", platform.addr))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "demo-client"),
            ("client_secret", "demo-secret"),
        ])
        .send()
        .await
        .expect("direct token")
        .json()
        .await
        .expect("token json");
    let token = token["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let client = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(128)
            .build()
            .expect("client")
    };
    let (to_sandbox, to_proxy) = (client(), client());
    // Warm-up of each (the proxy's first request fetches the org token).
    http_phase(&to_sandbox, &direct_url, Some(&token), 64, size.phase / 2).await;
    http_phase(&to_proxy, &proxy_url, None, 64, size.phase / 2).await;
    let (mut direct, mut proxied) = (Phase::default(), Phase::default());
    // The CPU the broker spends on the proxied phases, and the sandbox on the direct ones.
    let (mut broker_ms, mut sandbox_ms) = (0.0, 0.0);
    for round in 0..size.rounds {
        for first in [round % 2 == 0, round % 2 != 0] {
            let p = if first {
                let cpu = platform.cpu_ms();
                let p = http_phase(&to_sandbox, &direct_url, Some(&token), 64, size.phase).await;
                sandbox_ms += platform.cpu_ms() - cpu;
                p
            } else {
                let cpu = proxy.cpu_ms();
                let p = http_phase(&to_proxy, &proxy_url, None, 64, size.phase).await;
                broker_ms += proxy.cpu_ms() - cpu;
                p
            };
            let into = if first { &mut direct } else { &mut proxied };
            into.calls += p.calls;
            into.elapsed += p.elapsed;
            into.latencies.extend(p.latencies);
        }
    }
    let (d, p) = (summary(&mut direct), summary(&mut proxied));
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(0.0);
    let throughput = ratio(&p, &d, "calls_per_second");
    table.row(
        "proxy: API call, 64 callers: throughput vs direct with a token",
        format!(
            "{:.0}/s vs {:.0}/s = {throughput:.2}x",
            num(&p, "calls_per_second"),
            num(&d, "calls_per_second")
        ),
        ">= 0.40x",
        throughput >= 0.40,
    );
    let added_p50 = num(&p, "p50_us") - num(&d, "p50_us");
    table.row(
        "proxy: API call, 64 callers: p50 / p99 through the proxy",
        format!(
            "{:.0}/{:.0}us vs {:.0}/{:.0}us",
            num(&p, "p50_us"),
            num(&p, "p99_us"),
            num(&d, "p50_us"),
            num(&d, "p99_us")
        ),
        "p50 +<= 2000us",
        added_p50 <= 2000.0,
    );
    // CPU per request: the broker's per proxied request, the sandbox's (a small axum
    // handler) per direct one, for scale.
    let broker_us = broker_ms * 1000.0 / proxied.calls.max(1) as f64;
    let sandbox_us = sandbox_ms * 1000.0 / direct.calls.max(1) as f64;
    table.row(
        "proxy: broker CPU per proxied request (sandbox's per call)",
        format!("{broker_us:.0}us ({sandbox_us:.0}us)"),
        "(context)",
        true,
    );
    figures.insert(
        "proxy_vs_direct".into(),
        json!({"concurrency": 64, "direct": d, "proxied": p, "throughput_ratio": throughput, "p50_added_us": added_p50, "broker_cpu_us_per_request": broker_us, "sandbox_cpu_us_per_request": sandbox_us}),
    );

    // Memory per request in progress: answers that stream a first line, then hold for
    // 10 s, as many at once as the run's size says (within the default 1,024).
    let held = if size.quick { 100 } else { 1000 };
    let url = format!(
        "http://{}/api/v1/expense/export?chunks=2&interval_ms=10000",
        proxy.addr
    );
    let holder = client();
    // One held request first, so that what every request shares (the pools, the first
    // connection's buffers) is in the baseline.
    let mut first = holder.get(&url).send().await.expect("a held request");
    first.chunk().await.expect("its first line");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = proxy.rss_mib();
    let open = join_all((0..held).map(|_| {
        let (holder, url) = (holder.clone(), url.clone());
        async move {
            let mut response = holder.get(&url).send().await.expect("a held request");
            assert_eq!(response.status(), 200, "held request refused");
            response.chunk().await.expect("its first line");
            response
        }
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = proxy.rss_mib();
    let per_request_kib = (during - before) * 1024.0 / held as f64;
    table.row(
        &format!("proxy: memory per request in progress ({held} held open)"),
        format!("{per_request_kib:.1} KiB ({before:.1} -> {during:.1} MiB)"),
        "<= 64 KiB",
        per_request_kib <= 64.0,
    );
    figures.insert(
        "proxy_memory".into(),
        json!({"held": held, "rss_before_mib": before, "rss_during_mib": during, "per_request_kib": per_request_kib}),
    );
    drop(open);
    drop(first);
}
