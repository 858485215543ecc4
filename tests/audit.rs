//! The audit as an operator reads it: the first hand-out of a generation to a caller from
//! an address is logged at once, repeats are summarised (when the generation is replaced,
//! every summary interval, at shutdown), and the counts of all lines add up exactly to the
//! tokens handed out, as the metrics count them.

mod common;

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use common::{Capture, Harness, acme_toml, sandbox_config, with_key};
use tokenbroker::{
    auth::api_key_hash,
    proto::{
        GetOrgTokenRequest, GetUserTokenRequest, RefreshRequest,
        token_service_client::TokenServiceClient,
    },
};
use tonic::transport::Endpoint;

const PAYROLL: &str = "payroll-key-audit-1";
const ERP: &str = "erp-key-audit-2";

/// The audit lines logged so far.
fn audit_lines(capture: &Capture) -> Vec<String> {
    capture
        .text()
        .lines()
        .filter(|l| l.contains("tokenbroker::audit"))
        .map(str::to_owned)
        .collect()
}

/// The value of `name=` in a log line (quotes removed).
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

/// How many hand-outs a line accounts for: 1 for a first hand-out, its count for a summary.
fn counted(line: &str) -> u64 {
    if line.contains("token handed out again") {
        field(line, "count").unwrap().parse().unwrap()
    } else if line.contains("token handed out") {
        1
    } else {
        0
    }
}

/// The unary calls answered OK, by the broker's metrics.
fn ok_calls(h: &Harness) -> u64 {
    tokenbroker::metrics::render(&h.registry)
        .lines()
        .filter(|l| l.starts_with("tokenbroker_rpc_requests_total{") && l.contains("code=\"Ok\""))
        .filter(|l| !l.contains("WatchTokens"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_hand_outs_at_once_repeats_summarised_and_every_count_adds_up() {
    let capture = Capture::install("info");
    let callers = format!(
        "[audit]\nsummary_interval = \"2s\"\n\
         [[callers]]\nname = \"payroll\"\napi_key_sha256 = [\"{}\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"user_token\", \"refresh\"]\n\
         [[callers]]\nname = \"erp\"\napi_key_sha256 = [\"{}\"]\norgs = [\"*\"]\npermissions = [\"org_token\", \"user_token\"]\n",
        api_key_hash(PAYROLL),
        api_key_hash(ERP)
    );
    // The first summary interval ends no sooner than 2 s after this.
    let started = std::time::Instant::now();
    let h = Harness::with(
        sandbox_config(),
        move |s| format!("{callers}\n{}", acme_toml(s)),
        |_| None,
    )
    .await;
    let org = || GetOrgTokenRequest {
        org: "acme".into(),
        ..Default::default()
    };
    let mut payroll = h.client.clone();
    // The same caller from another address (127.0.0.2 is loopback too).
    let mut elsewhere = TokenServiceClient::new(
        Endpoint::from_shared(format!("http://{}", h.addr))
            .unwrap()
            .local_address(Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))))
            .connect()
            .await
            .unwrap(),
    );
    let user = h.user(1).person_id;

    for _ in 0..50 {
        payroll
            .get_org_token(with_key(org(), PAYROLL))
            .await
            .unwrap();
    }
    let first = h.sandbox.stats();
    for _ in 0..5 {
        elsewhere
            .get_org_token(with_key(org(), PAYROLL))
            .await
            .unwrap();
    }
    for _ in 0..20 {
        payroll
            .get_user_token(with_key(
                GetUserTokenRequest {
                    org: "acme".into(),
                    user_id: user.clone(),
                    ..Default::default()
                },
                ERP,
            ))
            .await
            .unwrap();
    }
    assert_eq!(
        h.sandbox.stats().client_credentials,
        first.client_credentials
    );

    // At once: one line per caller, address and key for generation 1; no summary yet.
    let lines = audit_lines(&capture);
    let firsts: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("token handed out") && !l.contains("again"))
        .collect();
    assert_eq!(firsts.len(), 3, "{lines:#?}");
    assert!(firsts.iter().any(|l| l.contains("caller=\"payroll\"")
        && l.contains("peer=127.0.0.1")
        && l.contains("rpc=\"GetOrgToken\"")
        && l.contains("generation=1")));
    assert!(firsts.iter().any(|l| l.contains("peer=127.0.0.2")));
    assert!(
        firsts
            .iter()
            .any(|l| l.contains("caller=\"erp\"") && field(l, "user_id") == Some(user.as_str()))
    );
    if started.elapsed() < Duration::from_millis(1900) {
        assert!(!lines.iter().any(|l| l.contains("again")), "{lines:#?}");
    }

    // A new generation: the old one's repeats are summarised at once, before its first line.
    let current = payroll
        .get_org_token(with_key(org(), PAYROLL))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    let rotated = payroll
        .refresh(with_key(
            RefreshRequest {
                org: "acme".into(),
                stale_access_token: current.access_token,
                ..Default::default()
            },
            PAYROLL,
        ))
        .await
        .unwrap()
        .into_inner()
        .token
        .unwrap();
    assert_eq!(rotated.generation, 2);
    let lines = audit_lines(&capture);
    let refresh_line = lines
        .iter()
        .position(|l| l.contains("rpc=\"Refresh\"") && l.contains("generation=2"))
        .expect("the Refresh hand-out, logged at once");
    // Every repeat of generation 1 to this address is written before it (in one line, or
    // in two if a summary interval ended meanwhile).
    let summaries: Vec<&String> = lines[..refresh_line]
        .iter()
        .filter(|l| {
            l.contains("again")
                && l.contains("peer=127.0.0.1")
                && l.contains("generation=1")
                && l.contains("org=acme")
                && field(l, "user_id") == Some("")
        })
        .collect();
    assert_eq!(
        summaries.iter().map(|l| counted(l)).sum::<u64>(),
        50,
        "{lines:#?}"
    );
    let last = summaries.last().expect("a summary of generation 1");
    assert!(field(last, "first").is_some_and(|t| t.ends_with('Z')));
    assert!(field(last, "last").is_some());

    // Every summary interval: the other address's and the user's repeats.
    for _ in 0..3 {
        payroll
            .get_org_token(with_key(org(), PAYROLL))
            .await
            .unwrap();
    }
    let repeats = |lines: &[String], selector: &str| -> u64 {
        lines
            .iter()
            .filter(|l| l.contains("again") && l.contains(selector))
            .map(|l| counted(l))
            .sum()
    };
    // The next summary (every 2 s) writes them: wait for it, not for a fixed time.
    common::wait_for("the summary of the repeats", async || {
        let lines = audit_lines(&capture);
        repeats(&lines, "peer=127.0.0.2") >= 4 && repeats(&lines, "caller=\"erp\"") >= 19
    })
    .await;
    let lines = audit_lines(&capture);
    assert_eq!(repeats(&lines, "peer=127.0.0.2"), 4, "{lines:#?}");
    assert_eq!(repeats(&lines, "caller=\"erp\""), 19, "{lines:#?}");

    // At shutdown: the rest. Then every count adds up to the tokens handed out.
    for _ in 0..7 {
        payroll
            .get_org_token(with_key(org(), PAYROLL))
            .await
            .unwrap();
    }
    let handed_out = ok_calls(&h);
    assert_eq!(handed_out, 50 + 5 + 20 + 1 + 1 + 3 + 7);
    let h = h.stop_and_keep().await;
    let lines = audit_lines(&capture);
    let total: u64 = lines.iter().map(|l| counted(l)).sum();
    assert_eq!(total, handed_out, "{lines:#?}");
    // Per caller too.
    let mut by_caller: HashMap<&str, u64> = HashMap::new();
    for l in &lines {
        *by_caller
            .entry(field(l, "caller").unwrap_or(""))
            .or_default() += counted(l);
    }
    assert_eq!(by_caller.get("erp"), Some(&20));
    assert_eq!(by_caller.get("payroll"), Some(&(handed_out - 20)));
    drop(h);
}
