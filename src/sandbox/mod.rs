//! The built-in stand-in for the expense platform: an HTTP server (axum) with the OAuth
//! flows of the real one, strict about secrets and single use, counting every request.
//! Demo mode, the test suite and users' own tests run against it. It imports nothing of
//! the broker.

mod assertion;
mod faults;
mod routes;
mod state;

use crate::sync::LockUnpoisoned;
use std::{
    collections::HashMap,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use assertion::p256_public_point;
pub use faults::{Fault, FaultRule, MalformedBody, Target};
use state::State;
pub use state::Stats;

/// One organization the sandbox knows.
#[derive(Debug, Clone)]
pub struct SandboxOrg {
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    /// How many users to seed (see [`SandboxOrg::users`]).
    pub users: u32,
}

/// A seeded user: reachable by person id or by ExternalSourceID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SandboxUser {
    #[serde(rename = "personId")]
    pub person_id: String,
    #[serde(rename = "externalSourceId")]
    pub external_id: String,
    pub name: String,
}

impl SandboxOrg {
    /// The org's seeded users: person ids are 32 hex digits, ExternalSourceIDs `EMP-00001`...
    pub fn users(&self) -> Vec<SandboxUser> {
        (1..=self.users)
            .map(|i| SandboxUser {
                person_id: format!("8ab28c3e{:08x}{i:016x}", fnv32(&self.name)),
                external_id: format!("EMP-{i:05}"),
                name: format!("Employee {i}"),
            })
            .collect()
    }
}

/// A stable hash, so an org's person ids are the same in every run.
fn fnv32(text: &str) -> u32 {
    text.bytes().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub orgs: Vec<SandboxOrg>,
    /// `expires_in` of every token issued.
    pub token_lifetime: Duration,
    /// How long an authorization code may be exchanged.
    pub code_lifetime: Duration,
    /// Demand client authentication (the secret, in the body or by HTTP Basic) on refresh
    /// and code exchange too, as standard servers do (RFC 6749 §6, §4.1.3). The platform
    /// asks only the client id there; a secret sent anyway is checked either way.
    pub strict_client_auth: bool,
    /// Leave `expires_in` out of token answers (legal: it is only RECOMMENDED), as some
    /// servers do; the tokens still expire after `token_lifetime`.
    pub omit_expires_in: bool,
    /// The scopes a client may ask for on client credentials (`invalid_scope` for any
    /// other); empty: any scope asked for is granted. The answer names what was granted.
    pub scopes: Vec<String>,
    /// Clients that authenticate by `private_key_jwt` (ES256 assertions, RFC 7523): client
    /// id -> the public point of its P-256 key (65 bytes, uncompressed). Such a client
    /// may still send its secret instead.
    pub client_keys: HashMap<String, Vec<u8>>,
}

impl SandboxConfig {
    /// The demo platform: org `demo` (client `demo-client`, secret `demo-secret`) with 100
    /// users and one-hour tokens.
    pub fn demo() -> Self {
        Self {
            orgs: vec![SandboxOrg {
                name: "demo".into(),
                client_id: "demo-client".into(),
                client_secret: "demo-secret".into(),
                users: 100,
            }],
            token_lifetime: Duration::from_secs(3600),
            code_lifetime: Duration::from_secs(60),
            strict_client_auth: false,
            omit_expires_in: false,
            scopes: Vec::new(),
            client_keys: HashMap::new(),
        }
    }
}

/// A running sandbox. Dropping it stops the server.
pub struct Sandbox {
    addr: SocketAddr,
    config: SandboxConfig,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Sandbox {
    /// Serves the sandbox on `listener` until the handle is dropped.
    pub async fn start(config: SandboxConfig, listener: TcpListener) -> io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State::new(&config)));
        let stop = CancellationToken::new();
        let router = routes::router(Arc::clone(&state), stop.clone());
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
            {
                tracing::error!(error = %e, "sandbox server failed");
            }
        });
        Ok(Self {
            addr,
            config,
            state,
            stop,
        })
    }

    /// Another handle on this running sandbox, sharing its state and counters; dropping it
    /// leaves the sandbox running (for several brokers in front of one sandbox).
    pub fn handle(&self) -> Self {
        Self {
            addr: self.addr,
            config: self.config.clone(),
            state: Arc::clone(&self.state),
            stop: self.stop.child_token(),
        }
    }

    /// The last token request it got: its form fields (secrets and tokens as `***`) and,
    /// as `header:NAME`, its headers other than Authorization.
    pub fn last_token_request(&self) -> Vec<(String, String)> {
        self.lock().last_token_request.clone()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the base of every URL below.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint.
    pub fn token_url(&self) -> String {
        format!("{}/oauth/token", self.base_url())
    }

    /// The authorization grant endpoint.
    pub fn authorization_grant_url(&self) -> String {
        format!("{}/oauth/authorization-grant", self.base_url())
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// What it has seen so far.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Makes every refresh token issued so far unusable (`invalid_grant` on use).
    pub fn revoke_refresh_tokens(&self) {
        self.lock().revoke_refresh_tokens();
    }

    /// Makes every access token issued so far unusable (401 on use).
    pub fn revoke_access_tokens(&self) {
        self.lock().revoke_access_tokens();
    }

    /// Makes one access token unusable (401 on use); its refresh token still works. False
    /// if the sandbox has no such token.
    pub fn revoke_access_token(&self, token: &str) -> bool {
        self.lock().revoke_access_token(token)
    }

    /// Removes a user (by person id or ExternalSourceID) from `org`, as an administrator
    /// would: no new codes, and its tokens stop working.
    pub fn remove_user(&self, org: &str, id: &str) -> bool {
        self.lock().remove_user(org, id)
    }

    /// Revokes a client's credentials: client credentials and refresh answer
    /// `invalid_client`; tokens already issued work until they expire.
    pub fn revoke_client(&self, client_id: &str) -> bool {
        self.lock().revoke_client(client_id)
    }

    /// Every access token, refresh token and code issued (and not yet forgotten).
    pub fn issued_secrets(&self) -> Vec<String> {
        self.lock().issued_secrets()
    }

    /// Injects a fault (see [`Fault`]); the earliest added rule that hits a request applies.
    pub fn inject(&self, rule: FaultRule) {
        self.lock().inject(rule);
    }

    /// How many injected faults are still waiting for a request (a rule with a count
    /// leaves once it has hit that many; one without never does): a test waits for this to
    /// know a fault was used.
    pub fn faults_left(&self) -> usize {
        self.lock().faults_left()
    }

    /// Removes every fault: the sandbox behaves again.
    pub fn clear_faults(&self) {
        self.lock().clear_faults();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock_unpoisoned()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
