//! Replicas on one Redis (`[store] redis_url`, default config otherwise; Redis itself run
//! as the README advises, `appendonly yes` and `appendfsync always`): cached GetOrgToken on
//! a Redis-backed replica against a memory-only broker (interleaved phases, same run);
//! 3 replicas and cold callers on one key; a rotation on one replica delivered to watchers
//! spread over 3; a rolling restart of 3 replicas holding user tokens; Redis paused under
//! steady load. Skipped, saying so, where `redis-server` is not installed.

use std::path::Path;

use crate::*;

/// A redis-server of the benchmark's own, on a free loopback port and in its own folder.
struct RedisServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisServer {
    fn start() -> Option<Self> {
        let server = Path::new("/usr/bin/redis-server");
        if !server.exists() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(server)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", dir.path().to_str().expect("utf-8 path")])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    child,
                    port,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server never listened");
    }

    fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status();
    }

    fn pause(&self) {
        self.signal("-STOP");
    }

    fn resume(&self) {
        self.signal("-CONT");
    }

    /// The `[store]` of a replica on this Redis, its keys under `prefix`.
    fn store(&self, prefix: &str) -> String {
        format!(
            "[store]\nredis_url = \"redis://127.0.0.1:{}/0\"\nprefix = \"{prefix}\"\nencryption_key_env = \"BENCH_STORE_KEY\"\n",
            self.port
        )
    }
}

pub(crate) async fn run(
    size: &Size,
    platform: &Process,
    table: &mut Table,
    figures: &mut serde_json::Map<String, Value>,
) {
    let Some(redis) = RedisServer::start() else {
        eprintln!("replicas: skipped, /usr/bin/redis-server is not installed");
        table.row(
            "replicas: on one Redis",
            "skipped (no redis-server)".into(),
            "(needs redis-server)",
            true,
        );
        return;
    };
    let mut out = serde_json::Map::new();

    // 1. Cached GetOrgToken: the store is never on the read path.
    let (plain, _plain_dir) = broker(platform, "").await_ready().await;
    let (shared, _shared_dir) = broker(platform, &redis.store("bench-read"))
        .await_ready()
        .await;
    let (plain_chans, shared_chans) = (
        channels(&plain.addr, 4).await,
        channels(&shared.addr, 4).await,
    );
    for chans in [&plain_chans, &shared_chans] {
        TokenServiceClient::new(chans[0].clone())
            .get_org_token(GetOrgTokenRequest::default())
            .await
            .expect("org token");
    }
    let (with, without) = interleaved(size, &shared_chans, &plain_chans, Call::OrgToken).await;
    let ratio = per_s(&with) / per_s(&without);
    table.row(
        "replicas: cached GetOrgToken, Redis-backed vs memory-only",
        format!(
            "{ratio:.3}x ({:.0}/s vs {:.0}/s)",
            per_s(&with),
            per_s(&without)
        ),
        ">= 0.98x",
        ratio >= 0.98,
    );
    out.insert("cached_org_token_ratio".into(), json!(ratio));
    drop((plain_chans, shared_chans, plain, shared));

    // 2. Three fresh replicas prefetch the org token (the default): one client-credentials
    // request. Then cold callers on one user key over the three: one request chain (the
    // authorization grant and the code exchange), the same token everywhere.
    let before = upstream(platform).await;
    let replicas = start_replicas(platform, &redis.store("bench-cold")).await;
    let org_requests = upstream(platform).await - before;
    table.row(
        "replicas: 3 fresh replicas prefetching the org token",
        format!("{org_requests} upstream requests"),
        "exactly 1",
        org_requests == 1,
    );
    let cold = size.cold_callers.min(3_000);
    let chans = replica_channels(&replicas, 4).await;
    let before = upstream(platform).await;
    let (answered, one_token) = cold_callers(&chans, cold, Some("EMP-00001")).await;
    let requests = upstream(platform).await - before;
    table.row(
        &format!("replicas: 3 replicas x {cold} cold callers on one user key"),
        format!(
            "{requests} upstream requests (grant + exchange), {answered} answered, {}",
            if one_token {
                "one token"
            } else {
                "SEVERAL tokens"
            }
        ),
        "exactly 1 chain (2)",
        requests == 2 && answered == cold && one_token,
    );
    out.insert("prefetch_upstream_requests".into(), json!(org_requests));
    drop(chans);
    drop(replicas);

    // The same cold callers on the org key itself, which only a non-default setting
    // leaves cold for callers: `[cache] prefetch_org_tokens = false`.
    let store = format!(
        "[cache]\nprefetch_org_tokens = false\n{}",
        redis.store("bench-cold-org")
    );
    let replicas = start_replicas(platform, &store).await;
    let chans = replica_channels(&replicas, 4).await;
    let before = upstream(platform).await;
    let (answered, one_token) = cold_callers(&chans, cold, None).await;
    let org_cold = upstream(platform).await - before;
    table.row(
        &format!(
            "replicas: 3 replicas x {cold} cold callers on the org key (prefetch_org_tokens = false)"
        ),
        format!(
            "{org_cold} upstream requests, {answered} answered, {}",
            if one_token { "one token" } else { "SEVERAL tokens" }
        ),
        "exactly 1",
        org_cold == 1 && answered == cold && one_token,
    );
    out.insert("cold_org_upstream_requests".into(), json!(org_cold));
    out.insert("cold_callers".into(), json!(cold));
    out.insert("cold_upstream_requests".into(), json!(requests));

    // 3. A rotation made on one replica, delivered to watchers spread over all three.
    let watchers = size.subscribers.min(3_000);
    let mut streams = Vec::with_capacity(watchers);
    for i in 0..watchers {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        let mut s = c
            .watch_tokens(WatchTokensRequest::default())
            .await
            .expect("subscribe")
            .into_inner();
        s.message().await.expect("initial").expect("open");
        streams.push(s);
    }
    let (mut delivered, mut missing) = (Vec::new(), 0);
    for _ in 0..size.rotations {
        let arrived = rotation_delivered(&mut streams, &chans[0]).await;
        missing += watchers - arrived.len();
        delivered.extend(arrived);
    }
    delivered.sort_unstable();
    let p99_ms = percentile(&delivered, 0.99) / 1000.0;
    table.row(
        &format!(
            "replicas: rotation on one, {watchers} watchers over 3, {} rotations",
            size.rotations
        ),
        format!(
            "p50 {:.1} ms, p99 {p99_ms:.1} ms, {missing} missing",
            percentile(&delivered, 0.5) / 1000.0
        ),
        "p99 <= 50 ms, 0",
        p99_ms <= 50.0 && missing == 0,
    );
    out.insert("watchers".into(), json!(watchers));
    out.insert("watch_p99_ms".into(), json!(p99_ms));
    out.insert("watch_missing".into(), json!(missing));
    drop(streams);
    drop(chans);
    drop(replicas);

    // 4. A rolling restart of 3 replicas holding user tokens, under load.
    let users = size.users_held.min(10_000);
    let ids: &'static [String] = Box::leak((1..=users).map(|n| format!("EMP-{n:05}")).collect());
    let store = redis.store("bench-rolling");
    let mut replicas = start_replicas(platform, &store).await;
    fill(&replica_channels(&replicas, 4).await, ids).await;
    let before = upstream(platform).await;
    let (mut calls, mut errors) = (0u64, 0u64);
    let serve = Duration::from_secs(if size.quick { 1 } else { 3 });
    for i in 0..replicas.len() {
        // Replica i stops (SIGTERM, drained) and starts again while the others serve
        // under load; then it serves under load too.
        let mut others = Vec::new();
        for (j, (r, _)) in replicas.iter().enumerate() {
            if j != i {
                others.extend(channels(&r.addr, 2).await);
            }
        }
        let load = tokio::spawn(user_load(others, ids, serve));
        drop(replicas.remove(i));
        replicas.insert(i, broker(platform, &store).await_ready().await);
        let (c, e) = load.await.expect("load task");
        let back = channels(&replicas[i].0.addr, 2).await;
        let (c2, e2) = user_load(back, ids, serve).await;
        calls += c + c2;
        errors += e + e2;
    }
    let requests = upstream(platform).await - before;
    table.row(
        &format!("replicas: rolling restart of 3 holding {users} user tokens"),
        format!("{requests} upstream requests, {errors} errors in {calls} calls"),
        "0, 0",
        requests == 0 && errors == 0,
    );
    out.insert("rolling_users".into(), json!(users));
    out.insert("rolling_upstream_requests".into(), json!(requests));
    out.insert("rolling_errors".into(), json!(errors));
    out.insert("rolling_calls".into(), json!(calls));

    // 5. Redis paused under steady load.
    let pause = Duration::from_secs(if size.quick { 2 } else { 10 });
    let chans = replica_channels(&replicas, 2).await;
    let reuse_before = reuse(platform).await;
    redis.pause();
    let (calls, errors) = user_load(chans, ids, pause).await;
    redis.resume();
    let reused = reuse(platform).await - reuse_before;
    table.row(
        &format!(
            "replicas: Redis paused {}s under steady load",
            pause.as_secs()
        ),
        format!("{errors} errors in {calls} calls, {reused} reuse"),
        "0 errors, 0 reuse",
        errors == 0 && reused == 0,
    );
    out.insert("pause_s".into(), json!(pause.as_secs()));
    out.insert("pause_calls".into(), json!(calls));
    out.insert("pause_errors".into(), json!(errors));
    out.insert("pause_reuse".into(), json!(reused));
    figures.insert("replicas".into(), Value::Object(out));
}

/// `n` callers at once over `chans`, all for one key (`user`'s token, or the org's): how
/// many were answered, and whether all got the same token.
async fn cold_callers(chans: &[Channel], n: usize, user: Option<&str>) -> (usize, bool) {
    let calls = (0..n).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        async move {
            let answer = match user {
                Some(user) => c
                    .get_user_token(GetUserTokenRequest {
                        user_id: user.into(),
                        ..Default::default()
                    })
                    .await
                    .map(|a| a.into_inner().token),
                None => c
                    .get_org_token(GetOrgTokenRequest::default())
                    .await
                    .map(|a| a.into_inner().token),
            };
            answer.ok().flatten().map(|t| t.access_token)
        }
    });
    let tokens: Vec<Option<String>> = join_all(calls).await;
    let answered = tokens.iter().filter(|t| t.is_some()).count();
    (answered, tokens.windows(2).all(|w| w[0] == w[1]))
}

/// Three replicas with `store` (each with its config folder), each answering.
async fn start_replicas(platform: &Process, store: &str) -> Vec<(Process, tempfile::TempDir)> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(broker(platform, store).await_ready().await);
    }
    replicas
}

async fn replica_channels(replicas: &[(Process, tempfile::TempDir)], per: usize) -> Vec<Channel> {
    let mut chans = Vec::new();
    for (r, _) in replicas {
        chans.extend(channels(&r.addr, per).await);
    }
    chans
}

/// 32 callers asking for the users' tokens in turn over `chans` for `length`: calls made
/// and errors.
async fn user_load(chans: Vec<Channel>, ids: &'static [String], length: Duration) -> (u64, u64) {
    let end = Instant::now() + length;
    let callers = (0..32).map(|i| {
        let mut c = TokenServiceClient::new(chans[i % chans.len()].clone());
        tokio::spawn(async move {
            let (mut calls, mut errors, mut n) = (0, 0, i * 997);
            while Instant::now() < end {
                let request = GetUserTokenRequest {
                    user_id: ids[n % ids.len()].clone(),
                    ..Default::default()
                };
                n += 1;
                calls += 1;
                if c.get_user_token(request).await.is_err() {
                    errors += 1;
                }
            }
            (calls, errors)
        })
    });
    join_all(callers)
        .await
        .into_iter()
        .map(|r| r.expect("load task"))
        .fold((0, 0), |(c, e), (c2, e2)| (c + c2, e + e2))
}

async fn upstream(platform: &Process) -> u64 {
    let stats = stats(platform).await;
    [
        "client_credentials",
        "refresh_token",
        "authorization_code",
        "authorization_grant",
    ]
    .iter()
    .map(|name| count(&stats, name))
    .sum()
}

async fn reuse(platform: &Process) -> u64 {
    let stats = stats(platform).await;
    count(&stats, "refresh_token_reuse") + count(&stats, "code_reuse")
}
