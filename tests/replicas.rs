//! Several replicas, one broker: brokers in front of one sandbox sharing a real
//! `redis-server` (started by the tests on ephemeral loopback ports), in-process and, to be
//! killed with SIGKILL, as child processes. Redis is paused past a lease, killed and
//! restarted empty, cut off from one replica, and failed over by Sentinel; every test ends
//! with the sandbox's counters: no refresh token or code presented twice.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    Harness, SECRET_ENV, acme_toml, assert_all_ok, org_request,
    redis::{Redis, Relay, Sentinels},
    refresh_request, sandbox_config, user_request, wait_for,
};
use futures::future::join_all;
use tokenbroker::{
    proto::{Token, TokenEventReason, token_service_client::TokenServiceClient},
    sandbox::{Fault, FaultRule, Sandbox, Target},
    secret::StoreKey,
};
use tokio::net::TcpListener;
use tonic::transport::Channel;

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

/// One sandbox, one store key, and a way to start replicas on a Redis.
struct Cluster {
    sandbox: Sandbox,
    key: String,
}

impl Cluster {
    async fn new() -> Self {
        let sandbox = Sandbox::start(
            sandbox_config(),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
        .unwrap();
        Self {
            sandbox,
            key: StoreKey::generate().to_hex(),
        }
    }

    /// `[store]` on the Redis at `url` (a `redis_url`), or as `store` says.
    fn toml(&self, store: &str) -> String {
        format!(
            "{}\n[store]\n{store}\nencryption_key_env = \"STORE_KEY\"\n",
            acme_toml(&self.sandbox)
        )
    }

    /// An in-process replica on the Redis at `url`.
    async fn replica(&self, url: &str) -> Harness {
        self.replica_with(&format!("redis_url = {url:?}")).await
    }

    /// An in-process replica with the `[store]` keys `store`.
    async fn replica_with(&self, store: &str) -> Harness {
        let key = self.key.clone();
        let env = move |name: &str| (name == "STORE_KEY").then(|| key.clone());
        Harness::on(self.sandbox.handle(), &self.toml(store), env).await
    }

    /// `n` replicas on the Redis at `url`.
    async fn replicas(&self, url: &str, n: usize) -> Vec<Harness> {
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            replicas.push(self.replica(url).await);
        }
        replicas
    }

    /// The broker binary with the config for a replica on the Redis at `url`, sealing with
    /// `key`; its config in `dir`.
    fn command(&self, dir: &Path, url: &str, key: &str) -> Command {
        let path = dir.join("broker.toml");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndrain_timeout = \"1s\"\n[cache]\nprefetch_org_tokens = false\n{}",
            self.toml(&format!("redis_url = {url:?}"))
        );
        std::fs::write(&path, text).unwrap();
        let mut command = Command::new(BIN);
        command
            .args(["--config", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .env(SECRET_ENV, &self.sandbox.config().orgs[0].client_secret)
            .env("STORE_KEY", key)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    /// A replica that must refuse to start: its exit code and what it wrote.
    fn refused(&self, url: &str, key: &str) -> (Option<i32>, String) {
        let dir = tempfile::tempdir().unwrap();
        let out = self.command(dir.path(), url, key).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// A replica as a child process (the broker binary), once it listens.
    async fn child(&self, url: &str) -> ChildReplica {
        self.child_with(url, &[]).await
    }

    /// [`Cluster::child`] with more environment variables.
    async fn child_with(&self, url: &str, env: &[(&str, &str)]) -> ChildReplica {
        let dir = tempfile::tempdir().unwrap();
        let mut command = self.command(dir.path(), url, &self.key);
        command.envs(env.iter().copied());
        let mut child = command.spawn().unwrap();
        let log = common::stderr_lines(&mut child);
        let lines = common::read_until(&log, "tokenbroker listening");
        let addr = common::listening_addr(&lines);
        let client = TokenServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        ChildReplica {
            child,
            client,
            _dir: dir,
        }
    }
}

struct ChildReplica {
    child: Child,
    client: TokenServiceClient<Channel>,
    _dir: tempfile::TempDir,
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every replica's org token, one call each.
async fn org_tokens(replicas: &[Harness]) -> Vec<Token> {
    let mut tokens = Vec::new();
    for r in replicas {
        tokens.push(r.org_token().await.expect("an org token"));
    }
    tokens
}

/// Waits until every replica hands out the same org token; returns it.
async fn converged(replicas: &[Harness]) -> Token {
    let mut last = None;
    wait_for("every replica on one token", async || {
        let tokens = org_tokens(replicas).await;
        let same = tokens
            .iter()
            .all(|t| t.access_token == tokens[0].access_token);
        last = tokens.into_iter().next();
        same
    })
    .await;
    last.expect("a token")
}

fn assert_no_reuse(sandbox: &Sandbox) {
    let stats = sandbox.stats();
    assert_eq!(
        (stats.refresh_token_reuse, stats.code_reuse),
        (0, 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_make_one_upstream_request_chain_for_3000_cold_callers() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    // One user, 1,000 callers on each replica at once.
    let user = "EMP-00001";
    let calls = (0..3000).map(|i| {
        let mut client = replicas[i % 3].client.clone();
        async move { client.get_user_token(user_request(user)).await }
    });
    let answers = join_all(calls).await;
    assert_all_ok(&answers);
    let tokens: Vec<String> = answers
        .into_iter()
        .map(|a| a.unwrap().into_inner().token.unwrap().access_token)
        .collect();
    assert!(
        tokens.iter().all(|t| *t == tokens[0]),
        "one token everywhere"
    );
    let stats = cluster.sandbox.stats();
    assert_eq!(
        (
            stats.client_credentials,
            stats.authorization_grant,
            stats.authorization_code
        ),
        (1, 1, 1),
        "one org token, one grant, one exchange: {stats:?}"
    );
    replicas[0].assert_acts_as(&tokens[0], user).await;

    // Likewise for an org token, cold, on three fresh replicas of another Redis.
    let redis = Redis::start().await;
    let fresh = Cluster::new().await;
    let replicas = fresh.replicas(&redis.url(), 3).await;
    let calls = (0..3000).map(|i| {
        let mut client = replicas[i % 3].client.clone();
        async move { client.get_org_token(org_request("acme")).await }
    });
    let answers = join_all(calls).await;
    assert_all_ok(&answers);
    assert_eq!(fresh.sandbox.stats().client_credentials, 1);
    let first = org_tokens(&replicas).await;
    assert!(
        first
            .iter()
            .all(|t| t.access_token == first[0].access_token)
    );
    assert_no_reuse(&fresh.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_replica_reaches_the_watchers_of_every_replica() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    let first = replicas[0].org_token().await.unwrap();
    let mut on_b = common::watch(&replicas[1].client, &[]).await;
    let mut on_c = common::watch(&replicas[2].client, &[]).await;
    for stream in [&mut on_b, &mut on_c] {
        let initial = common::next(stream).await;
        assert_eq!(initial.reason(), TokenEventReason::Initial);
        assert_eq!(initial.token.unwrap().access_token, first.access_token);
    }
    let mut last = first.generation;
    for _ in 0..3 {
        let stale = replicas[0].org_token().await.unwrap().access_token;
        let rotated = replicas[0].refresh("", &stale).await.unwrap();
        assert_eq!(rotated.generation, last + 1);
        for stream in [&mut on_b, &mut on_c] {
            let event = common::next(stream).await;
            let token = event.token.unwrap();
            assert_eq!(
                (token.generation, token.access_token.as_str()),
                (rotated.generation, rotated.access_token.as_str())
            );
        }
        last = rotated.generation;
    }
    // A stale report on another replica returns the current token with no upstream call.
    let requests = cluster.sandbox.stats().upstream_requests();
    let again = replicas[2].refresh("", &first.access_token).await.unwrap();
    assert_eq!(again.generation, last);
    assert_eq!(cluster.sandbox.stats().upstream_requests(), requests);
    // Three rotations: one client-credentials grant, then refresh tokens, each once.
    let stats = cluster.sandbox.stats();
    assert_eq!((stats.client_credentials, stats.refresh_token), (1, 3));
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_refreshes_of_one_stale_token_over_three_replicas_cost_one_rotation() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    let stale = replicas[0].org_token().await.unwrap();
    let calls = (0..1000).map(|i| {
        let mut client = replicas[i % 3].client.clone();
        let stale = stale.access_token.clone();
        async move { client.refresh(refresh_request("", &stale)).await }
    });
    let answers = join_all(calls).await;
    assert_all_ok(&answers);
    let generations: Vec<u64> = answers
        .into_iter()
        .map(|a| a.unwrap().into_inner().token.unwrap().generation)
        .collect();
    assert!(generations.iter().all(|g| *g == stale.generation + 1));
    let stats = cluster.sandbox.stats();
    assert_eq!((stats.client_credentials, stats.refresh_token), (1, 1));
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_replica_holds_every_replica() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 2).await;
    cluster.sandbox.inject(FaultRule::times(
        Fault::RateLimit {
            retry_after_secs: 30,
        },
        Target::ClientCredentials,
        1,
    ));
    let throttled = replicas[0].org_token().await.unwrap_err();
    assert_eq!(throttled.code(), tonic::Code::Unavailable, "{throttled:?}");
    let requests = cluster.sandbox.stats().upstream_requests();
    // The other replica honours the platform's Retry-After without asking it again.
    let held = replicas[1].org_token().await.unwrap_err();
    assert_eq!(held.code(), tonic::Code::Unavailable, "{held:?}");
    assert!(
        held.message().contains("every replica holds off"),
        "{}",
        held.message()
    );
    assert_eq!(cluster.sandbox.stats().upstream_requests(), requests);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_refresh_leaves_no_refresh_token_behind() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let mut doomed = cluster.child(&redis.url()).await;
    let survivor = cluster.replica(&redis.url()).await;
    let first = survivor.org_token().await.unwrap();
    // The refresh reaches the platform and is held there; its replica dies with it.
    cluster.sandbox.inject(FaultRule::times(
        Fault::Latency { millis: 3_000 },
        Target::RefreshToken,
        1,
    ));
    let mut client = doomed.client.clone();
    let stale = first.access_token.clone();
    let in_flight = tokio::spawn(async move { client.refresh(refresh_request("", &stale)).await });
    wait_for("the refresh at the platform", async || {
        cluster.sandbox.faults_left() == 0
    })
    .await;
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    assert!(in_flight.await.unwrap().is_err());
    // Another replica rotates: the dead one's lease lapses, and with its refresh token
    // taken, the key is re-issued through client credentials.
    let rotated = survivor.refresh("", &first.access_token).await.unwrap();
    assert!(rotated.generation > first.generation);
    let stats = cluster.sandbox.stats();
    assert_eq!(stats.client_credentials, 2, "{stats:?}");
    assert!(stats.refresh_token <= 1, "{stats:?}");
    assert_no_reuse(&cluster.sandbox);
    // And it rotates on from there through its new refresh token.
    let next = survivor.refresh("", &rotated.access_token).await.unwrap();
    assert_eq!(next.generation, rotated.generation + 1);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_past_a_lease_costs_no_caller_an_error_and_replicas_converge() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    let before = converged(&replicas).await;
    redis.pause();
    // Past a lease (5 s), callers keep getting the token each replica holds.
    let until = tokio::time::Instant::now() + Duration::from_secs(7);
    while tokio::time::Instant::now() < until {
        for r in &replicas {
            let token = r
                .org_token()
                .await
                .expect("no caller error while Redis is paused");
            assert_eq!(token.access_token, before.access_token);
            assert!(r.broker.is_ready(), "readiness stays SERVING");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A cold user meanwhile is fetched through its primary grant, one flight per replica.
    let cold = replicas[0].user_token("EMP-00002").await;
    assert!(cold.is_ok(), "{cold:?}");
    redis.resume();
    let stale = before.access_token.clone();
    let rotated = replicas[1].refresh("", &stale).await.unwrap();
    let after = converged(&replicas).await;
    assert_eq!(after.access_token, rotated.access_token);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_gets_back_what_the_replicas_hold() {
    if !common::redis::available() {
        return;
    }
    let mut redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    let before = converged(&replicas).await;
    redis.kill();
    for r in &replicas {
        assert_eq!(
            r.org_token().await.unwrap().access_token,
            before.access_token
        );
    }
    redis.restart_empty().await;
    // The replicas write back the token they hold (each resubscribes and compares).
    wait_for("the held token written back", async || {
        redis.command(&["EXISTS", "tokenbroker:token:acme"]) == "1"
    })
    .await;
    // Its refresh token is gone with the old Redis: the next rotation re-issues.
    let rotated = replicas[2].refresh("", &before.access_token).await.unwrap();
    assert!(rotated.generation > before.generation);
    let after = converged(&replicas).await;
    assert_eq!(after.access_token, rotated.access_token);
    assert_eq!(cluster.sandbox.stats().client_credentials, 2);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_redis_serves_on_and_catches_up_when_it_returns() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let relay = Relay::start(redis.addr()).await;
    let cluster = Cluster::new().await;
    let near = cluster.replica(&redis.url()).await;
    let far = cluster.replica(&relay.url(0)).await;
    let first = near.org_token().await.unwrap();
    assert_eq!(
        far.org_token().await.unwrap().access_token,
        first.access_token
    );
    relay.cut();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rotated = near.refresh("", &first.access_token).await.unwrap();
    // The far replica keeps serving what it holds, still valid.
    for _ in 0..5 {
        let token = far
            .org_token()
            .await
            .expect("no caller error while cut off");
        assert_eq!(token.access_token, first.access_token);
    }
    relay.restore();
    wait_for("the far replica caught up", async || {
        far.org_token().await.unwrap().access_token == rotated.access_token
    })
    .await;
    assert_eq!(cluster.sandbox.stats().client_credentials, 1);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sentinel_failover_no_refresh_token_of_the_old_primary_is_used() {
    if !common::redis::available() {
        return;
    }
    let mut primary = Redis::start().await;
    let replica = Redis::start_replica_of(primary.port()).await;
    let sentinels = Sentinels::start("mymaster", primary.port()).await;
    let cluster = Cluster::new().await;
    let urls: Vec<String> = sentinels.urls();
    let store = format!("redis_sentinel = {{ master = \"mymaster\", urls = {urls:?} }}");
    let a = cluster.replica_with(&store).await;
    let b = cluster.replica_with(&store).await;
    let first = a.org_token().await.unwrap();
    let second = a.refresh("", &first.access_token).await.unwrap();
    assert_eq!(cluster.sandbox.stats().refresh_token, 1);
    // The replica has the record (refresh token included); then the primary is lost and
    // the sentinels promote the replica. (Asynchronous replication could have lost a take
    // the old primary acknowledged: the record's epoch is what tells.)
    wait_for("the record on the replica", async || {
        replica.command(&["HEXISTS", "tokenbroker:token:acme", "rt"]) == "1"
    })
    .await;
    primary.kill();
    let new_port = sentinels
        .wait_for_master_other_than(primary.port(), Duration::from_secs(30))
        .await;
    assert_eq!(new_port, replica.port());
    // A rotation under the new primary: the refresh token written under the old one is
    // never used; the key is re-issued through client credentials. (If it comes while the
    // sentinels still elect, it is made without the store, and written back after.)
    let third = common::retry("a rotation after the failover", async || {
        b.refresh("", &second.access_token).await
    })
    .await;
    assert!(third.generation > second.generation);
    let stats = cluster.sandbox.stats();
    assert_eq!(
        (stats.client_credentials, stats.refresh_token),
        (2, 1),
        "{stats:?}"
    );
    // Both replicas converge on it, and it rotates on through its own refresh token.
    let replicas = [a, b];
    let now = converged(&replicas).await;
    assert_eq!(now.access_token, third.access_token);
    let fourth = replicas[0].refresh("", &third.access_token).await.unwrap();
    assert_eq!(fourth.generation, third.generation + 1);
    assert_eq!(cluster.sandbox.stats().refresh_token, 2);
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_seen_by_one_replica_hold_every_replica() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 2).await;
    assert!(cluster.sandbox.revoke_client("acme-client"));
    let rejected = replicas[0].org_token().await.unwrap_err();
    assert_eq!(rejected.code(), tonic::Code::FailedPrecondition);
    let requests = cluster.sandbox.stats().upstream_requests();
    let held = replicas[1].org_token().await.unwrap_err();
    assert_eq!(held.code(), tonic::Code::FailedPrecondition, "{held:?}");
    assert!(
        held.message().contains("check the org's credentials"),
        "{}",
        held.message()
    );
    assert_eq!(cluster.sandbox.stats().upstream_requests(), requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_lapses_never_leads_to_a_second_presentation() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let store = format!(
        "redis_url = {:?}\nlease = \"300ms\"\ntimeout = \"100ms\"",
        redis.url()
    );
    let a = cluster.replica_with(&store).await;
    let b = cluster.replica_with(&store).await;
    let first = a.org_token().await.unwrap();
    // A's refresh token is taken and at the platform, which is slow; meanwhile Redis
    // pauses past A's lease, so A cannot renew it.
    cluster.sandbox.inject(FaultRule::times(
        Fault::Latency { millis: 2_000 },
        Target::RefreshToken,
        1,
    ));
    let mut client = a.client.clone();
    let stale = first.access_token.clone();
    let slow = tokio::spawn(async move { client.refresh(refresh_request("", &stale)).await });
    wait_for("A's refresh at the platform", async || {
        cluster.sandbox.faults_left() == 0
    })
    .await;
    redis.pause();
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.resume();
    // B finds no lease, flies, and finds the refresh token taken: client credentials.
    let from_b = b.refresh("", &first.access_token).await.unwrap();
    let from_a = slow.await.unwrap().unwrap().into_inner().token.unwrap();
    let stats = cluster.sandbox.stats();
    assert_eq!(
        (stats.refresh_token, stats.client_credentials),
        (1, 2),
        "{stats:?}"
    );
    assert_no_reuse(&cluster.sandbox);
    // Of the two new tokens, the first installed is the key's; both replicas serve it.
    let replicas = [a, b];
    let now = converged(&replicas).await;
    assert!(
        [&from_a.access_token, &from_b.access_token].contains(&&now.access_token),
        "one of the two new tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_is_used_and_a_wrong_one_or_key_refuses_to_start() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    assert_eq!(
        redis.command(&["CONFIG", "SET", "requirepass", "s3cret-pw"]),
        "OK"
    );
    let cluster = Cluster::new().await;
    let good = format!("redis://:s3cret-pw@127.0.0.1:{}/0", redis.port());
    let replica = cluster.replica(&good).await;
    let token = replica.org_token().await.unwrap();
    // The token is in Redis: a second replica takes it, no upstream request.
    let second = cluster.replica(&good).await;
    assert_eq!(
        second.org_token().await.unwrap().access_token,
        token.access_token
    );
    assert_eq!(cluster.sandbox.stats().client_credentials, 1);

    let wrong = format!("redis://:nope@127.0.0.1:{}/0", redis.port());
    let (code, said) = cluster.refused(&wrong, &cluster.key);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("store.redis_url"), "{said}");
    assert!(
        !said.contains("nope"),
        "the password is never shown: {said}"
    );
    // Another replica with another key cannot open the tokens: it says which setting.
    let other = StoreKey::generate().to_hex();
    let (code, said) = cluster.refused(&good, &other);
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("store.encryption_key_env"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_while_redis_is_down_serves_and_writes_back_once_it_is_up() {
    if !common::redis::available() {
        return;
    }
    let mut redis = Redis::start().await;
    redis.kill();
    let cluster = Cluster::new().await;
    let replica = cluster.replica(&redis.url()).await;
    let token = replica.org_token().await.expect("served without the store");
    redis.restart_empty().await;
    wait_for("the token written back", async || {
        redis.command(&["HGET", "tokenbroker:token:acme", "gen"]) == token.generation.to_string()
    })
    .await;
    // A second replica now takes it from Redis, and rotates it through the refresh token
    // that came with it: held in the first replica's memory until Redis returned, then
    // moved there.
    let second = cluster.replica(&redis.url()).await;
    assert_eq!(
        second.org_token().await.unwrap().access_token,
        token.access_token
    );
    let rotated = second.refresh("", &token.access_token).await.unwrap();
    assert_eq!(rotated.generation, token.generation + 1);
    let stats = cluster.sandbox.stats();
    assert_eq!(
        (stats.client_credentials, stats.refresh_token),
        (1, 1),
        "{stats:?}"
    );
    // The first replica takes the new token, and never presents the moved one itself.
    let replicas = [replica, second];
    assert_eq!(
        converged(&replicas).await.access_token,
        rotated.access_token
    );
    assert_no_reuse(&cluster.sandbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_over_tls_is_trusted_through_the_system_roots() {
    if !common::redis::available() {
        return;
    }
    // A private CA, trusted as an operator would: SSL_CERT_FILE (read by the system roots).
    let pki = common::TestPki::new();
    let (ca_file, cert_file, key_file) = (
        pki.path("ca.pem"),
        pki.path("leaf.pem"),
        pki.path("leaf-key.pem"),
    );
    let tls_port = common::redis::free_port();
    let redis = Redis::start_with(
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert_file,
            "--tls-key-file",
            &key_file,
            "--tls-ca-cert-file",
            &ca_file,
            "--tls-auth-clients",
            "no",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    let cluster = Cluster::new().await;
    let url = format!("rediss://127.0.0.1:{tls_port}/0");
    let replica = cluster
        .child_with(&url, &[("SSL_CERT_FILE", &ca_file)])
        .await;
    let token = replica
        .client
        .clone()
        .get_org_token(org_request("acme"))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    // Written over TLS: the record is there, at the token's generation.
    wait_for("the record over TLS", async || {
        redis.command(&["HGET", "tokenbroker:token:acme", "gen"]) == token.generation.to_string()
    })
    .await;
    assert_no_reuse(&cluster.sandbox);
}

/// With the Redis store the upstream budget is the cluster's: three replicas, each asked
/// for its own cold users at once, send no more than one broker would (the default
/// 10/s, burst 10), so a platform throttling at 15/s with a burst of 20 answers no 429.
/// (Three budgets of their own would send a first burst of 30.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_upstream_budget() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 3).await;
    cluster.sandbox.inject(FaultRule::always(
        Fault::Throttle {
            per_second: 15,
            burst: 20,
        },
        Target::Any,
    ));
    let calls = replicas.iter().enumerate().map(|(r, h)| {
        let users: Vec<String> = (1..=12).map(|i| h.user(r * 12 + i).person_id).collect();
        h.user_tokens(users)
    });
    for answers in futures::future::join_all(calls).await {
        common::assert_all_ok(&answers);
    }
    let stats = cluster.sandbox.stats();
    assert_eq!(stats.throttled, 0, "{stats:?}");
    assert_eq!(
        (stats.authorization_grant, stats.authorization_code),
        (36, 36)
    );
    assert_no_reuse(&cluster.sandbox);
}

/// A 429 one replica sees holds every replica's requests to that host, for other keys
/// too: the other replica's cold user waits (its caller past its deadline is told it
/// waits for the upstream budget), and the platform is not asked again meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_on_one_replica_holds_the_host_for_every_key_on_every_replica() {
    if !common::redis::available() {
        return;
    }
    let redis = Redis::start().await;
    let cluster = Cluster::new().await;
    let replicas = cluster.replicas(&redis.url(), 2).await;
    org_tokens(&replicas).await;
    cluster.sandbox.inject(FaultRule::times(
        Fault::RateLimit {
            retry_after_secs: 30,
        },
        Target::AuthorizationGrant,
        1,
    ));
    let throttled = replicas[0].user_token("EMP-00001").await.unwrap_err();
    assert_eq!(throttled.code(), tonic::Code::Unavailable, "{throttled:?}");
    let requests = cluster.sandbox.stats().upstream_requests();
    let mut request = tonic::Request::new(user_request("EMP-00002"));
    request.set_timeout(std::time::Duration::from_millis(500));
    let held = replicas[1]
        .client
        .clone()
        .get_user_token(request)
        .await
        .unwrap_err();
    assert_eq!(held.code(), tonic::Code::Unavailable, "{held:?}");
    assert!(
        held.message().contains("upstream budget"),
        "{}",
        held.message()
    );
    assert_eq!(cluster.sandbox.stats().upstream_requests(), requests);
    assert_eq!(
        replicas[1].broker.stats().budget.holds,
        0,
        "the hold is Redis's"
    );
}
