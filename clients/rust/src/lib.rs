//! tokenbroker's Rust client: the current token in one line.
//!
//! A [`TokenSource`] follows one key (an org's token, or one user's) over a `WatchTokens`
//! stream: it holds the newest token, reconnects with jittered backoff, never hands out an
//! expired token (it asks the broker itself when the stream has been down that long), and
//! empties on a `REVOKED` or `UNAVAILABLE` event. With the `reqwest` feature (on by
//! default), [`RequestBuilderExt::send_with_token`] sends a request with the token and, on
//! a 401, rotates it with one `Refresh` and sends the request once more.
//!
//! ```no_run
//! # async fn run() -> Result<(), tokenbroker_client::Error> {
//! use tokenbroker_client::{Connection, RequestBuilderExt, TokenSource};
//!
//! let broker = Connection::lazy("127.0.0.1:50051")?;
//! let source = TokenSource::user(&broker, "acme", "EMP-00001");
//! let token = source.token().await?; // send as `Authorization: Bearer {token.secret()}`
//! let me = reqwest::Client::new()
//!     .get("https://expense.example/api/v1/expense/me")
//!     .send_with_token(&source)
//!     .await?;
//! # let _ = (token, me); Ok(()) }
//! ```

#![warn(missing_docs)]

mod backoff;
mod connection;
mod error;
#[cfg(feature = "reqwest")]
mod http;
mod source;
mod state;

/// The broker's gRPC messages and client, generated from `proto/`.
pub mod proto {
    #![allow(missing_docs)]
    tonic::include_proto!("tokenbroker.v1");
}

pub use connection::{Connection, ConnectionBuilder};
pub use error::{Error, Gone};
#[cfg(feature = "reqwest")]
pub use http::RequestBuilderExt;
pub use source::{DEFAULT_TIMEOUT, TokenSource};
pub use state::{AccessToken, EXPIRY_MARGIN};
