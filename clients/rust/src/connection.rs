//! The channel to the broker that sources share: the target (`host:port`,
//! `http(s)://host:port`, `unix:///path`), TLS, and the API key every call carries.

use std::{fmt, time::Duration};

use tokio::net::UnixStream;
use tonic::{
    metadata::{AsciiMetadataValue, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri},
};
use zeroize::Zeroizing;

use crate::{Error, proto::token_service_client::TokenServiceClient};

/// The generated client with the caller's credentials on every call.
pub(crate) type Client = TokenServiceClient<InterceptedService<Channel, Credentials>>;

/// How long connecting may take before a call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on an idle connection, so a watch stream notices a broker that vanished
/// without closing it (a host gone, a partition) within about half a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One channel to a broker (one HTTP/2 connection, re-established as needed). Cheap to
/// clone; every [`TokenSource`](crate::TokenSource) made from it shares it.
#[derive(Clone)]
pub struct Connection {
    client: Client,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection to `target` with no TLS and no API key; see [`Connection::builder`].
    pub fn lazy(target: &str) -> Result<Self, Error> {
        Self::builder(target).build()
    }

    /// Starts a connection to `target`: `host:port`, `http://host:port`,
    /// `https://host:port` (TLS) or `unix:///path/to.sock`.
    pub fn builder(target: &str) -> ConnectionBuilder {
        ConnectionBuilder {
            target: target.to_owned(),
            api_key: None,
            ca: None,
            identity: None,
            domain: None,
        }
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }
}

/// The settings of a [`Connection`].
pub struct ConnectionBuilder {
    target: String,
    api_key: Option<Zeroizing<String>>,
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
    domain: Option<String>,
}

impl ConnectionBuilder {
    /// Sends `key` as `authorization: Bearer <key>` on every call (the broker's
    /// `[[callers]] api_key_sha256`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(Zeroizing::new(key.into()));
        self
    }

    /// Uses TLS, trusting the CA certificate(s) in `pem` for the broker's certificate
    /// (without it, an `https://` target trusts the system's roots).
    pub fn ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Presents a client certificate (mutual TLS, the broker's `[[callers]] tls_names`):
    /// the certificate chain and its private key, both PEM.
    pub fn identity(mut self, cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert_pem.into(), Zeroizing::new(key_pem.into())));
        self
    }

    /// The name to check the broker's certificate against, when it is not the target's
    /// host.
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// The connection. It connects on the first call and reconnects as needed, so it can
    /// be made while the broker is still starting.
    pub fn build(self) -> Result<Connection, Error> {
        let invalid = |why: String| Error::Target {
            target: self.target.clone(),
            why,
        };
        let credentials = Credentials(match &self.api_key {
            None => None,
            Some(key) => {
                let mut value: AsciiMetadataValue =
                    MetadataValue::try_from(format!("Bearer {}", key.as_str()))
                        .map_err(|_| invalid("the API key must be printable ASCII".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        });
        let tls =
            self.ca.is_some() || self.identity.is_some() || self.target.starts_with("https://");
        let channel = if let Some(path) = self.target.strip_prefix("unix://") {
            if tls {
                return Err(invalid("TLS is not used on a Unix socket".into()));
            }
            let path = path.to_owned();
            // The URI only names the `:authority`; the connector ignores it.
            endpoint("http://localhost")
                .map_err(invalid)?
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            UnixStream::connect(path).await?,
                        ))
                    }
                }))
        } else {
            let uri = if self.target.contains("://") {
                self.target.clone()
            } else if tls {
                format!("https://{}", self.target)
            } else {
                format!("http://{}", self.target)
            };
            let mut endpoint = endpoint(&uri).map_err(invalid)?;
            if tls {
                let mut config = ClientTlsConfig::new();
                config = match &self.ca {
                    Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
                    None => config.with_native_roots(),
                };
                if let Some((cert, key)) = &self.identity {
                    config = config.identity(Identity::from_pem(cert, key.as_slice()));
                }
                if let Some(domain) = &self.domain {
                    config = config.domain_name(domain);
                }
                endpoint = endpoint
                    .tls_config(config)
                    .map_err(|e| invalid(e.to_string()))?;
            }
            endpoint.connect_lazy()
        };
        Ok(Connection {
            client: TokenServiceClient::with_interceptor(channel, credentials),
        })
    }
}

fn endpoint(uri: &str) -> Result<Endpoint, String> {
    Ok(Endpoint::from_shared(uri.to_owned())
        .map_err(|e| format!("not a target ({e}); use host:port or unix:///path"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Adds the API key, if any, to every call.
#[derive(Clone)]
pub(crate) struct Credentials(Option<AsciiMetadataValue>);

impl Interceptor for Credentials {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn targets_are_checked_up_front() {
        for good in [
            "127.0.0.1:50051",
            "http://127.0.0.1:50051",
            "unix:///run/tb.sock",
        ] {
            assert!(Connection::lazy(good).is_ok(), "{good}");
        }
        let bad = Connection::lazy("not a target").unwrap_err();
        assert_eq!(bad.code(), "INVALID_ARGUMENT");
        assert!(bad.to_string().contains("host:port"), "{bad}");
        let key = Connection::builder("127.0.0.1:1")
            .api_key("bad\nkey")
            .build();
        assert!(key.unwrap_err().to_string().contains("API key"));
        let tls_unix = Connection::builder("unix:///x")
            .ca_certificate("pem")
            .build();
        assert!(tls_unix.is_err());
    }
}
