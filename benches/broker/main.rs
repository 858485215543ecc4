//! The benchmark: the broker and the sandbox as child processes on loopback, driven by a
//! tonic client. Speed is always a ratio against `grpc.health.v1.Health/Check` on the same
//! server, same client and same concurrency, measured in interleaved phases of the same
//! run, because the machines are shared and noisy. Counts come from the sandbox's
//! counters, memory from the broker's `/proc/PID/status`.
//!
//!     cargo bench --bench broker                    # full run (about 25 minutes)
//!     cargo bench --bench broker -- --quick         # smoke run (seconds; CI runs it)
//!     cargo bench --bench broker -- --soak 120      # a shorter soak
//!     cargo bench --bench broker -- --only users    # some scenario groups: org, users,
//!                                                   # cold, watch, store, replicas, budget,
//!                                                   # proxy, soak
//!                                                   # (comma-separated)
//!     cargo bench --bench broker -- --users 20000   # fewer user tokens held
//!     cargo bench --bench broker -- --rounds 20 --phase-ms 500   # speed phases (default 10 x 2 s)
//!     cargo bench --bench broker -- --broker-toml '[audit]\nevery_call = true'
//!                                       # a non-default setting for the org and users brokers
//!
//! Every broker runs with the default config: its TOML holds only what points it at the
//! sandbox. A scenario that needs another setting names it beside its figure.
//!
//! `BENCH_BROKER_WRAPPER="valgrind --tool=massif"` runs the broker under a profiler;
//! `BENCH_TRACE_PHASES=1` prints each speed phase's wall-clock start, to cut a system-wide
//! `perf record -a -k CLOCK_REALTIME` (broker and client together) into phases.
//!
//! Prints a table and writes the figures as JSON (`--out FILE`, default
//! `target/bench/broker.json`).

mod load;
mod process;
mod report;
mod scenarios;
mod size;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::{Value, json};
use tokenbroker::proto::{
    GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest, WatchTokensRequest,
    token_service_client::TokenServiceClient,
};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_tokenbroker");

use load::*;
use process::*;
use report::*;
use size::*;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (size, out) = Size::from_args();
    let mut table = Table(Vec::new());
    let mut figures = serde_json::Map::new();
    eprintln!(
        "benchmark ({}): broker and sandbox as child processes on loopback; every broker with upstream.max_requests_per_second = 100000 and upstream.burst = 100000 (non-default: the scenarios measure the broker, not the upstream budget's 10/s pace), except the budget and proxy groups', at the default",
        if size.quick { "quick" } else { "full" }
    );

    // 1. Cached GetOrgToken, 64 callers, against Health/Check.
    let platform = sandbox(size.users_held, "1h");
    if !size.broker_toml.is_empty() {
        eprintln!(
            "org and users brokers with the non-default settings {:?}",
            size.broker_toml
        );
    }
    let (b, _dir) = broker(&platform, &size.broker_toml).await_ready().await;
    let chans = channels(&b.addr, 4).await;
    TokenServiceClient::new(chans[0].clone())
        .get_org_token(GetOrgTokenRequest::default())
        .await
        .expect("org token");
    if size.runs("org") {
        scenarios::org::run(&size, &platform, &chans, &mut table, &mut figures).await;
    }

    // 2. Cached GetUserToken with many users held; memory growth over the empty broker.
    if size.runs("users") {
        scenarios::users::run(&size, &b, &chans, &mut table, &mut figures).await;
    }
    drop(chans);
    drop(b);

    // 3. Cold key: many concurrent GetOrgToken, one upstream request.
    if size.runs("cold") {
        scenarios::cold::run(&size, &platform, &mut table, &mut figures).await;
    }

    // 7. Many subscribers over many connections: a forced rotation reaches them all.
    if size.runs("watch") {
        scenarios::watch::run(&size, &platform, &mut table, &mut figures).await;
    }
    // 9. The token store: with it against without, a restart, rotations.
    if size.runs("store") {
        scenarios::store::run(&size, &platform, &mut table, &mut figures).await;
    }
    // 10. Replicas on one Redis: the read path, cold keys, fan-out, a rolling restart, a
    // paused Redis.
    if size.runs("replicas") {
        scenarios::replicas::run(&size, &platform, &mut table, &mut figures).await;
    }
    // 12. The token-injecting proxy against calling the sandbox directly; its memory per
    // request in progress.
    if size.runs("proxy") {
        scenarios::proxy::run(&size, &platform, &mut table, &mut figures).await;
    }
    drop(platform);

    // 11. The upstream budget at its defaults against a throttling sandbox: a cold burst,
    // and a restart holding the user tokens while some are in use (full run only).
    if size.runs("budget") {
        scenarios::budget::run(&size, &mut table, &mut figures).await;
    }

    // 8. Soak: 1-second tokens under steady load.
    if size.runs("soak") {
        scenarios::soak::run(&size, &mut table, &mut figures).await;
    }
    table.print();
    let report = json!({"quick": size.quick, "figures": figures, "rows": table.0.iter().map(|(s, m, t, ok)| json!({"scenario": s, "measured": m, "target": t, "met": ok})).collect::<Vec<_>>()});
    if let Some(dir) = out.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(&out, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write the figures");
    println!("\nfigures written to {}", out.display());
    let met = table.0.iter().filter(|r| r.3).count();
    println!("bench: {met} of {} targets met", table.0.len());
}
