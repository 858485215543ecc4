//! A service that always holds the current org token and a user's token, with the Rust
//! client library (`clients/rust`, crate `tokenbroker-client`): each `TokenSource` watches
//! the broker's stream, keeps the newest token and reconnects with jittered backoff when
//! the stream ends (a broker restart, a network blip).
//!
//! Run the demo broker (`cargo run --release -- demo`), then:
//!     cargo run --example watch_token -- 127.0.0.1:50051 [ROUNDS]

use std::time::Duration;

use tokenbroker_client::{Connection, TokenSource};

#[tokio::main]
async fn main() -> Result<(), tokenbroker_client::Error> {
    let mut args = std::env::args().skip(1);
    let target = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let rounds: Option<u32> = args.next().and_then(|n| n.parse().ok());

    // One connection, shared by every source made from it.
    let broker = Connection::lazy(&target)?;
    let org = TokenSource::org(&broker, "");
    let user = TokenSource::user(&broker, "", "EMP-00001");

    // The application: every call to the platform asks the source for the current token;
    // it answers from memory, and never with an expired one.
    let mut round = 0;
    while rounds.is_none_or(|n| round < n) {
        round += 1;
        let org_token = org.token().await?;
        let user_token = user.token().await?;
        println!(
            "org token generation {}, user token generation {}: calling the platform",
            org_token.generation(),
            user_token.generation()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}
