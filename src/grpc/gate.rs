//! What a gRPC call presents to the gate: the `authorization` metadata's bearer key, the
//! client certificate's names, the Unix peer's uid.

use std::sync::LazyLock;

use tonic::{Request, Status, metadata::AsciiMetadataKey, transport::server::UdsConnectInfo};

use crate::{
    auth::{AuthError, Presented},
    gate::{Admitted, Gate, certificate_names},
};

/// Authenticates and admits the sender of `request` (see [`Gate::admit`]).
pub fn admit<T>(gate: &Gate, request: &Request<T>) -> Result<Admitted, Status> {
    let peer = request.remote_addr().map(|a| a.ip());
    Ok(gate.admit(peer, || presented(request))?)
}

/// The header's name, parsed once: a lookup by `&str` parses the name on every call.
static AUTHORIZATION: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("authorization"));

/// What the request presents; an `authorization` that is no bearer key is refused.
fn presented<T>(request: &Request<T>) -> Result<Presented<'_>, AuthError> {
    let api_key = crate::auth::sent_key(
        request
            .metadata()
            .get(&*AUTHORIZATION)
            .map(|v| v.to_str().ok()),
        "authorization metadata",
    )?;
    let tls_names = request
        .peer_certs()
        .and_then(|certs| certs.first().map(|leaf| certificate_names(leaf.as_ref())))
        .unwrap_or_default();
    let unix_uid = request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|cred| cred.uid());
    Ok(Presented {
        api_key,
        tls_names,
        unix_uid,
    })
}
