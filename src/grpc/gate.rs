//! The gate every TokenService call passes: who is calling (API key, client certificate,
//! Unix peer uid) and from where, whether it is within its rate limit, and, once the org
//! is known, whether it may do this. What bounds the broker's work is the broker's own
//! (`broker::Limits`): a call answered from the cache is never refused for being one of many.

use std::{
    net::IpAddr,
    sync::{Arc, LazyLock, RwLock},
};

use tonic::{Request, Status, metadata::AsciiMetadataKey, transport::server::UdsConnectInfo};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::auth::{Authenticated, Callers, Permission, Presented};

/// Authentication and policy for the service.
#[derive(Debug)]
pub struct Gate {
    /// Swapped whole by a reload.
    callers: RwLock<Arc<Callers>>,
}

/// A call let through: its caller, and the address it called from (`None` over a Unix
/// socket), for the audit.
pub struct Admitted {
    pub caller: Arc<Authenticated>,
    pub peer: Option<IpAddr>,
}

impl Gate {
    pub fn new(callers: Callers) -> Self {
        Self {
            callers: RwLock::new(Arc::new(callers)),
        }
    }

    /// Authenticates the sender of a call or stream and admits it within the caller's rate
    /// limit, or refuses it.
    pub fn admit<T>(&self, request: &Request<T>) -> Result<Admitted, Status> {
        let callers = self.callers.read().unwrap_or_else(|p| p.into_inner());
        // With no callers configured anyone local may ask: what a request presents is not
        // looked at (three lookups fewer on every call).
        let caller = if callers.is_open() {
            callers.authenticate(&Presented::default())?
        } else {
            let presented = presented(request);
            // A credential sent but unreadable is refused, never passed over for another
            // (the connection's uid or certificate).
            if presented.api_key.is_none() && request.metadata().contains_key(&*AUTHORIZATION) {
                return Err(Status::unauthenticated(
                    "the authorization metadata must be \"Bearer <API key>\"",
                ));
            }
            callers.authenticate(&presented)?
        };
        drop(callers);
        caller.admit()?;
        Ok(Admitted {
            caller,
            peer: request.remote_addr().map(|a| a.ip()),
        })
    }
}

impl Gate {
    /// Replaces the callers (a reload). Calls in flight finish as they began.
    pub fn set_callers(&self, callers: Callers) {
        *self.callers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(callers);
    }
}

impl Admitted {
    /// Whether the caller may use `permission` on `org`.
    pub fn authorize(&self, permission: Permission, org: &str) -> Result<(), Status> {
        Ok(self.caller.authorize(permission, org)?)
    }
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
