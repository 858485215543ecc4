//! tokenbroker: one gRPC service that holds an expense platform's OAuth credentials and
//! hands out fresh tokens, so that no other process holds a client secret or races on a
//! single-use refresh token.
//!
//! The map: a request flows one way, [`grpc`] (validate, convert) -> [`broker`] (cache hit,
//! or one single-flight fetch per key) -> [`upstream`] (the platform's HTTP endpoints), and
//! the broker keeps each new token in [`store`] (an encrypted file that outlives the
//! process, when configured) before it hands it out; rotations flow back from [`broker`] through watch channels to [`grpc`] streams.
//! [`audit`] records which caller got which token from where, counting repeats.
//! [`config`] turns TOML and secrets into a validated [`config::Config`]; [`secret`] keeps
//! secrets out of logs; [`sandbox`] is the built-in stand-in for the platform that demo
//! mode and the tests run against.
//!
//! Around them: [`Server`] (`server.rs`) assembles the broker, the gate and the gRPC
//! service from a config and drains them at shutdown; [`Listener`] (`listener.rs`) takes
//! the connections; [`Reloader`] (`reload.rs`) applies a new config to a running server.
#![forbid(unsafe_code)]
// The compiler proves the RPC futures Send through the Redis client's types, which nest
// deeper than its default limit of 128.
#![recursion_limit = "256"]

pub mod audit;
pub mod auth;
pub mod broker;
pub mod config;
pub mod demo;
pub mod gate;
pub mod grpc;
mod incoming;
mod listener;
pub mod metrics;
pub mod proxy;
mod reload;
pub mod sandbox;
pub mod secret;
mod server;
pub mod store;
mod sync;
mod tls;
pub mod upstream;

/// The generated `tokenbroker.v1` messages and client. (The server is built from its own
/// copy of the messages: `grpc::wire`.)
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/client/tokenbroker.v1.rs"));
}

pub use listener::Listener;
pub use reload::Reloader;
pub use server::{Error, Server, run, serve_metrics};
