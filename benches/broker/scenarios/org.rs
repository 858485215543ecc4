//! Cached GetOrgToken (64 callers) against Health/Check, and a direct client-credentials request for context.

use crate::*;

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    chans: &[Channel],
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let org = versus_health(chans, 64, size, Call::OrgToken).await;
    table.row(
        "GetOrgToken cached, 64 callers: throughput vs Health/Check",
        with_rounds(&org, "throughput_ratio"),
        ">= 0.97x",
        org["throughput_ratio"].as_f64().unwrap_or(0.0) >= 0.97,
    );
    table.row(
        "GetOrgToken cached, 64 callers: p99 vs Health/Check",
        with_rounds(&org, "p99_ratio"),
        "<= 1.10x",
        org["p99_ratio"].as_f64().unwrap_or(9.0) <= 1.10,
    );
    figures.insert("cached_org_token".into(), org);

    // Context: a direct client-credentials request (what a service does alone) vs a cached
    // GetOrgToken, one caller each, sequential.
    let http = reqwest::Client::new();
    let form = [
        ("grant_type", "client_credentials"),
        ("client_id", "demo-client"),
        ("client_secret", "demo-secret"),
    ];
    let mut direct = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        http.post(format!("http://{}/oauth/token", platform.addr))
            .form(&form)
            .send()
            .await
            .expect("direct")
            .bytes()
            .await
            .expect("body");
        direct.push(t.elapsed().as_micros() as u64);
    }
    let mut client = TokenServiceClient::new(chans[0].clone());
    let mut cached = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        client
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .expect("cached");
        cached.push(t.elapsed().as_micros() as u64);
    }
    direct.sort_unstable();
    cached.sort_unstable();
    let (d50, c50) = (percentile(&direct, 0.5), percentile(&cached, 0.5));
    table.row(
        "context: direct client-credentials p50 / cached GetOrgToken p50",
        format!("{:.0}us / {:.0}us = {:.2}x", d50, c50, d50 / c50.max(1.0)),
        "(context)",
        true,
    );
    figures.insert(
        "direct_vs_cached".into(),
        json!({"direct_p50_us": d50, "cached_p50_us": c50, "ratio": d50 / c50.max(1.0)}),
    );
}
