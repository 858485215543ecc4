//! The token store (`[store]`, default config otherwise): cached GetOrgToken with the
//! store against a broker without it (interleaved phases, same run), the memory and file
//! size of the user tokens held, a restart holding them, and rotations per second with
//! every token written (its commit's sync included) against the same without the store.

use crate::*;

/// What the store brokers add to their config: the store in their folder.
const STORE_TOML: &str =
    "[store]\npath = \"tokens.redb\"\nencryption_key_env = \"BENCH_STORE_KEY\"\n";

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (plain, _plain_dir) = broker(platform, "").await_ready().await;
    let stored = broker_in(dir.path(), platform, STORE_TOML)
        .await_ready()
        .await;
    let (plain_chans, store_chans) = (
        channels(&plain.addr, 4).await,
        channels(&stored.addr, 4).await,
    );
    for chans in [&plain_chans, &store_chans] {
        TokenServiceClient::new(chans[0].clone())
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .expect("org token");
    }

    // 1. Cached GetOrgToken: the store is never on the read path.
    let (with, without) = interleaved(size, &store_chans, &plain_chans, Call::OrgToken).await;
    let org_ratio = per_s(&with) / per_s(&without);
    table.row(
        "store: cached GetOrgToken throughput, with vs without",
        format!(
            "{org_ratio:.3}x ({:.0}/s vs {:.0}/s)",
            per_s(&with),
            per_s(&without)
        ),
        ">= 0.98x",
        org_ratio >= 0.98,
    );

    // 2. The user tokens held: memory (before anything else is held), and the file they
    // take (below).
    let empty_rss = stored.rss_mib();
    let users = size.users_held;
    let ids: &'static [String] = Box::leak((1..=users).map(|n| format!("EMP-{n:05}")).collect());
    let filling = Instant::now();
    fill(&store_chans, ids).await;
    let fill_s = filling.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let growth = stored.rss_mib() - empty_rss;
    table.row(
        &format!("store: memory, {users} user tokens held, RSS growth"),
        format!("{growth:.1} MiB (filled in {fill_s:.1}s)"),
        "<= 80 MiB",
        growth <= 80.0,
    );
    // 3. Rotations per second, 1,000 keys at once (or fewer in a smoke run): a Refresh
    // each, so every one is a refresh grant, a take and a write (and its sync).
    let keys = size.users_held.min(1_000);
    let rotation_ids: &'static [String] =
        Box::leak((1..=keys).map(|n| format!("EMP-{n:05}")).collect());
    let mut rates = Vec::new();
    for chans in [&plain_chans, &store_chans] {
        fill(chans, rotation_ids).await;
        let started = Instant::now();
        let calls = rotation_ids.iter().enumerate().map(|(i, id)| {
            let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
            async move {
                // Naming the held token as stale: a Refresh naming none would be answered
                // from the cache within renewal.min_rotation_interval of the fill.
                let held = c
                    .get_user_token(GetUserTokenRequest {
                        user_id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .expect("the held token")
                    .into_inner()
                    .token
                    .expect("a token");
                c.refresh(RefreshRequest {
                    user_id: id.clone(),
                    stale_access_token: held.access_token,
                    ..Default::default()
                })
                .await
                .expect("refresh")
            }
        });
        join_all(calls).await;
        rates.push(keys as f64 / started.elapsed().as_secs_f64());
    }
    table.row(
        &format!("store: rotations/s, {keys} keys at once (each written and synced)"),
        format!("{:.0}/s (without the store {:.0}/s)", rates[1], rates[0]),
        "(measured)",
        true,
    );
    drop(plain_chans);
    drop(plain);

    drop(store_chans);
    drop(stored);
    let file_mib = std::fs::metadata(dir.path().join("tokens.redb"))
        .map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0));
    table.row(
        &format!("store: file size, {users} user tokens"),
        format!("{file_mib:.1} MiB"),
        "(measured)",
        true,
    );

    // 4. A restart on the same file: start to the first cached answer, no upstream call.
    let before = upstream_requests(&stats(platform).await);
    let started = Instant::now();
    let restarted = broker_in(dir.path(), platform, STORE_TOML);
    let mut client = TokenServiceClient::new(channels(&restarted.addr, 1).await.remove(0));
    client
        .get_user_token(GetUserTokenRequest {
            user_id: ids[ids.len() / 2].clone(),
            ..Default::default()
        })
        .await
        .expect("a restored token");
    let first_answer_s = started.elapsed().as_secs_f64();
    let requests = upstream_requests(&stats(platform).await) - before;
    table.row(
        &format!("store: restart holding {users} user tokens, start to first cached answer"),
        format!("{first_answer_s:.2}s, {requests} upstream requests"),
        "<= 2 s, 0 requests",
        first_answer_s <= 2.0 && requests == 0,
    );
    figures.insert(
        "store".into(),
        json!({
            "cached_org_token_ratio": org_ratio,
            "with_per_s": per_s(&with),
            "without_per_s": per_s(&without),
            "rotation_keys": keys,
            "rotations_per_s": rates[1],
            "rotations_per_s_without_store": rates[0],
            "users_held": users,
            "rss_growth_mib": growth,
            "file_mib": file_mib,
            "restart_first_answer_s": first_answer_s,
            "restart_upstream_requests": requests,
        }),
    );
}

/// The sandbox's requests to its token and grant endpoints.
fn upstream_requests(stats: &Value) -> u64 {
    [
        "client_credentials",
        "refresh_token",
        "authorization_code",
        "authorization_grant",
    ]
    .iter()
    .map(|name| count(stats, name))
    .sum()
}
