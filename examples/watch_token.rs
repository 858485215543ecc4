//! A client that always holds the current org token: it watches the broker's stream,
//! keeps the newest token, and reconnects with capped, jittered backoff when the stream
//! ends (a broker restart, a network blip) — as go-spiffe's watcher does.
//!
//! Run the demo broker (`cargo run --release -- demo`), then:
//!     cargo run --example watch_token -- http://127.0.0.1:50051

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use tokenbroker::proto::{
    TokenEventReason, WatchTokensRequest, token_service_client::TokenServiceClient,
};

/// The current token, shared with the code that calls the platform.
type Current = Arc<RwLock<Option<String>>>;

/// Watches forever, storing every new token in `current`.
async fn watch(url: String, current: Current) {
    let mut failures = 0u32;
    loop {
        match watch_once(&url, &current).await {
            Ok(()) => failures = 0,
            Err(status) => {
                failures += 1;
                eprintln!("watch ended: {status}");
            }
        }
        // Full jitter: up to 100 ms doubling to 10 s, so restarting brokers are not stampeded.
        let ceiling = Duration::from_millis(100)
            .saturating_mul(1 << failures.min(7))
            .min(Duration::from_secs(10));
        tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
    }
}

async fn watch_once(url: &str, current: &Current) -> Result<(), tonic::Status> {
    let mut client = TokenServiceClient::connect(url.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = WatchTokensRequest {
        org: String::new(),
        user_ids: vec![],
    };
    let mut stream = client.watch_tokens(request).await?.into_inner();
    while let Some(message) = stream.message().await? {
        let reason = message.reason();
        let token = message.token.map(|t| t.access_token);
        if token.is_none() {
            eprintln!("token lost ({reason:?}): {}", message.detail);
        } else if reason != TokenEventReason::Initial {
            eprintln!("new token ({reason:?})");
        }
        *current.write().unwrap_or_else(|p| p.into_inner()) = token;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let current: Current = Arc::default();
    tokio::spawn(watch(url, Arc::clone(&current)));
    // The application: every call to the platform reads the current token.
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        match current.read().unwrap_or_else(|p| p.into_inner()).as_deref() {
            Some(token) => println!(
                "calling the platform with a token ending …{}",
                &token[token.len().saturating_sub(6)..]
            ),
            None => println!("no token yet"),
        }
    }
}
