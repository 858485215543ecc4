//! Soak: 1-second tokens under steady load for minutes.

use crate::*;

pub(crate) async fn run(
    size: &Size,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let platform = sandbox(100, "1s");
    let (b, _d) = broker(&platform, "").await_ready().await;
    let chans = channels(&b.addr, 4).await;
    let callers = 16;
    let errors = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + size.soak;
    let load = (0..callers).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        let (errors, served) = (Arc::clone(&errors), Arc::clone(&served));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            while Instant::now() < end {
                tick.tick().await;
                let org = c.get_org_token(GetOrgTokenRequest::default()).await;
                let user = c
                    .get_user_token(GetUserTokenRequest {
                        user_id: format!("EMP-{:05}", i % 10 + 1),
                        ..Default::default()
                    })
                    .await;
                for token in [
                    org.map(|r| r.into_inner().token),
                    user.map(|r| r.into_inner().token),
                ] {
                    match token {
                        Ok(Some(t))
                            if t.expires_at.is_some_and(|e| {
                                e.seconds * 1000 + i64::from(e.nanos) / 1_000_000 > now_ms()
                            }) =>
                        {
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        })
    });
    let load: Vec<_> = load.collect();
    let mut rss = Vec::new();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1).min(size.soak / 5)).await;
        rss.push(b.rss_mib());
    }
    join_all(load).await;
    let soak_stats = stats(&platform).await;
    let settled: Vec<f64> = rss.iter().skip(rss.len() / 5).copied().collect();
    let median = {
        let mut s = settled.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s.get(s.len() / 2).copied().unwrap_or(0.0)
    };
    let spread = settled
        .iter()
        .map(|r| (r - median).abs() / median.max(1.0))
        .fold(0.0, f64::max);
    let (errors, served) = (
        errors.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
    );
    let reuse = count(&soak_stats, "refresh_token_reuse") + count(&soak_stats, "code_reuse");
    let upstream = [
        "client_credentials",
        "refresh_token",
        "authorization_grant",
        "authorization_code",
    ]
    .iter()
    .map(|k| count(&soak_stats, k))
    .sum::<u64>();
    table.row(
        &format!(
            "soak: 1 s tokens for {} s, {callers} callers",
            size.soak.as_secs()
        ),
        format!(
            "RSS ±{:.1}%, {errors} errors, {reuse} reuse",
            spread * 100.0
        ),
        "±10%, 0, 0",
        spread <= 0.10 && errors == 0 && reuse == 0,
    );
    // Without the broker each caller process keeps its own org and user token: one
    // request chain per token lifetime each (an org token: 1 request; a user token: 2).
    let without = callers as u64 * 3 * size.soak.as_secs();
    table.row(
        "context: upstream requests, broker vs each caller on its own",
        format!("{upstream} vs ~{without}"),
        "(context)",
        true,
    );
    figures.insert("soak".into(), json!({"seconds": size.soak.as_secs(), "callers": callers, "tokens_served": served, "caller_errors": errors, "reuse": reuse, "rss_mib": rss, "rss_median_mib": median, "rss_max_deviation": spread, "upstream_requests": upstream, "upstream_requests_without_broker_estimate": without}));
}
