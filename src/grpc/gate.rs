//! The gate every TokenService call passes: who is calling (API key, client certificate,
//! Unix peer uid), whether it is within its rate limit and the server's concurrency limit,
//! and, once the org is known, whether it may do this. Also the audit line for every token
//! handed out.

use std::sync::{Arc, LazyLock, RwLock};

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Status, metadata::AsciiMetadataKey, transport::server::UdsConnectInfo};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::{
    auth::{Authenticated, Callers, Permission, Presented},
    broker::{Token, TokenKey},
};

/// Authentication, policy and limits for the service.
#[derive(Debug)]
pub struct Gate {
    /// Swapped whole by a reload.
    callers: RwLock<Arc<Callers>>,
    in_flight: Semaphore,
    max_in_flight: usize,
}

/// A call let through: its caller, and its place among the unary calls in flight (held
/// until the call's answer is built, and borrowed from the gate rather than counted on a
/// shared `Arc` every call would bump).
pub struct Admitted<'g> {
    pub caller: Arc<Authenticated>,
    _permit: Option<SemaphorePermit<'g>>,
}

impl Gate {
    pub fn new(callers: Callers, max_in_flight: usize) -> Self {
        Self {
            callers: RwLock::new(Arc::new(callers)),
            in_flight: Semaphore::new(max_in_flight),
            max_in_flight,
        }
    }

    /// Authenticates the sender of a unary call and admits it within the caller's rate
    /// limit and the server's limit of calls in flight, or refuses it.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Admitted<'_>, Status> {
        let mut admitted = self.admit_stream(request)?;
        let permit = self.in_flight.try_acquire().map_err(|_| {
            Status::resource_exhausted(format!(
                "the broker is handling {} calls already (server.max_concurrent_requests); retry shortly",
                self.max_in_flight
            ))
        })?;
        admitted._permit = Some(permit);
        Ok(admitted)
    }

    /// Authenticates the sender of a stream and admits it within the caller's rate limit.
    /// Streams are bounded per connection instead of by the calls in flight.
    pub fn admit_stream<T>(&self, request: &Request<T>) -> Result<Admitted<'_>, Status> {
        let presented = presented(request);
        let caller = self
            .callers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .authenticate(&presented)?;
        caller.admit()?;
        Ok(Admitted {
            caller,
            _permit: None,
        })
    }
}

impl Gate {
    /// Replaces the callers (a reload). Calls in flight finish as they began.
    pub fn set_callers(&self, callers: Callers) {
        *self.callers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(callers);
    }
}

impl Admitted<'_> {
    /// Whether the caller may use `permission` on `org`.
    pub fn authorize(&self, permission: Permission, org: &str) -> Result<(), Status> {
        Ok(self.caller.authorize(permission, org)?)
    }

    /// Logs the one audit event of a token handed out.
    pub fn audit(&self, rpc: &'static str, org: &str, user: Option<&str>, token: &Token) {
        audit(&self.caller.caller.name, rpc, org, user, token);
    }
}

/// The audit event of a token handed out: who got which token (by fingerprint).
pub fn audit(caller: &str, rpc: &'static str, org: &str, user: Option<&str>, token: &Token) {
    tracing::info!(
        target: "tokenbroker::audit",
        caller,
        rpc,
        org = %org,
        user_id = user.unwrap_or(""),
        fingerprint = %token.fingerprint,
        generation = token.generation,
        "token handed out"
    );
}

/// The audit event of a rotation that WatchTokens streams carry to a caller: one for all
/// `streams` of the caller watching the key (see `watch::RotationAudits`).
pub fn audit_rotation(caller: &str, key: &TokenKey, token: &Token, streams: usize) {
    tracing::info!(
        target: "tokenbroker::audit",
        caller,
        rpc = "WatchTokens",
        org = %key.org,
        user_id = key.user.as_deref().unwrap_or(""),
        fingerprint = %token.fingerprint,
        generation = token.generation,
        streams,
        "token handed out"
    );
}

/// The header's name, parsed once: a lookup by `&str` parses the name on every call.
static AUTHORIZATION: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("authorization"));

/// What the request presents: its bearer key, its client certificate's names, its Unix
/// peer's uid.
fn presented<T>(request: &Request<T>) -> Presented<'_> {
    let api_key = request
        .metadata()
        .get(&*AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let tls_names = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|leaf| certificate_names(leaf.as_ref())))
        .unwrap_or_default();
    let unix_uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    Presented {
        api_key,
        tls_names,
        unix_uid,
    }
}

/// The DNS and URI subject alternative names of a DER certificate (TLS already verified it).
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}
