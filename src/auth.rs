//! Who may ask: the configured callers, how each proves who it is (an API key, a client
//! certificate's name, a Unix socket peer's uid), and what each may do. Pure policy; the
//! gRPC layer gathers what a request presents and asks here.

use std::{fmt, num::NonZeroU32, sync::Arc};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a caller may do; each RPC needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// `GetOrgToken`.
    OrgToken,
    /// `GetUserToken`.
    UserToken,
    /// `Refresh`.
    Refresh,
    /// `WatchTokens`.
    Watch,
    /// Requests through the token-injecting HTTP proxy (`[proxy]`).
    Proxy,
}

impl Permission {
    pub const ALL: [Permission; 5] = [
        Self::OrgToken,
        Self::UserToken,
        Self::Refresh,
        Self::Watch,
        Self::Proxy,
    ];

    /// The name used in the config and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::OrgToken => "org_token",
            Self::UserToken => "user_token",
            Self::Refresh => "refresh",
            Self::Watch => "watch",
            Self::Proxy => "proxy",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// Which orgs a caller may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrgScope {
    All,
    Only(Vec<String>),
}

/// A per-caller token bucket: `per_second` sustained, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// One configured caller.
#[derive(Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    /// SHA-256 of each API key it may present as `authorization: Bearer <key>`.
    pub api_key_sha256: Vec<[u8; 32]>,
    /// Names (DNS or URI SANs, e.g. a SPIFFE ID) its client certificate may carry.
    pub tls_names: Vec<String>,
    /// Uids it may connect to the Unix socket as.
    pub unix_uids: Vec<u32>,
    pub orgs: OrgScope,
    pub permissions: Vec<Permission>,
    pub rate_limit: Option<RateLimit>,
}

impl fmt::Debug for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Caller")
            .field("name", &self.name)
            .field("api_keys", &self.api_key_sha256.len())
            .field("tls_names", &self.tls_names)
            .field("unix_uids", &self.unix_uids)
            .field("orgs", &self.orgs)
            .field("permissions", &self.permissions)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// What a request presents to prove who sent it.
#[derive(Debug, Default)]
pub struct Presented<'a> {
    /// The bearer key from the `authorization` metadata.
    pub api_key: Option<&'a str>,
    /// The names in the client certificate, if the connection is mutual TLS.
    pub tls_names: Vec<String>,
    /// The peer's uid, if the connection is a Unix socket.
    pub unix_uid: Option<u32>,
}

/// A refused request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that names no caller.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known caller asked for something it may not have.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller is over its rate limit.
    #[error("{0}")]
    RateLimited(String),
}

/// An authenticated caller, with its rate limiter.
#[derive(Debug)]
pub struct Authenticated {
    pub caller: Caller,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Authenticated {
    /// The caller's configured name.
    pub fn name(&self) -> &str {
        &self.caller.name
    }

    fn new(caller: Caller) -> Self {
        let limiter = caller
            .rate_limit
            .map(|r| RateLimiter::direct(Quota::per_second(r.per_second).allow_burst(r.burst)));
        Self { caller, limiter }
    }

    /// Whether the caller may use `permission` on `org`.
    pub fn authorize(&self, permission: Permission, org: &str) -> Result<(), AuthError> {
        let name = &self.caller.name;
        if !self.caller.permissions.contains(&permission) {
            return Err(AuthError::PermissionDenied(format!(
                "caller {name} lacks permission {}; add it to the caller's permissions in the broker's config",
                permission.name()
            )));
        }
        match &self.caller.orgs {
            OrgScope::All => Ok(()),
            OrgScope::Only(orgs) if orgs.iter().any(|o| o == org) => Ok(()),
            OrgScope::Only(_) => Err(AuthError::PermissionDenied(format!(
                "caller {name} may not use org {org}; add it to the caller's orgs in the broker's config"
            ))),
        }
    }

    /// Takes one request from the caller's token bucket.
    pub fn admit(&self) -> Result<(), AuthError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter.check().map_err(|_| {
            let rate = self.caller.rate_limit.map_or(0, |r| r.per_second.get());
            AuthError::RateLimited(format!(
                "caller {} is over its rate limit of {rate} requests per second; slow down and retry",
                self.caller.name
            ))
        })
    }
}

/// Every configured caller. With none, the broker is open (to the loopback or Unix
/// socket it may then only listen on) and every request acts as `anonymous`.
#[derive(Debug)]
pub struct Callers {
    callers: Vec<Arc<Authenticated>>,
    anonymous: Arc<Authenticated>,
}

impl Callers {
    pub fn new(callers: Vec<Caller>) -> Self {
        let anonymous = Caller {
            name: "anonymous".into(),
            api_key_sha256: vec![],
            tls_names: vec![],
            unix_uids: vec![],
            orgs: OrgScope::All,
            permissions: Permission::ALL.to_vec(),
            rate_limit: None,
        };
        Self {
            callers: callers
                .into_iter()
                .map(|c| Arc::new(Authenticated::new(c)))
                .collect(),
            anonymous: Arc::new(Authenticated::new(anonymous)),
        }
    }

    /// Whether no callers are configured.
    pub fn is_open(&self) -> bool {
        self.callers.is_empty()
    }

    /// The caller a request's credentials name. An API key, when sent, must match; else a
    /// client certificate's names; else the Unix peer's uid.
    pub fn authenticate(&self, presented: &Presented<'_>) -> Result<Arc<Authenticated>, AuthError> {
        if self.is_open() {
            return Ok(Arc::clone(&self.anonymous));
        }
        if let Some(key) = presented.api_key {
            let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
            // Compare against every hash, in constant time each, without stopping early.
            let mut found = None;
            for caller in &self.callers {
                for hash in &caller.caller.api_key_sha256 {
                    if bool::from(hash.ct_eq(&digest)) && found.is_none() {
                        found = Some(Arc::clone(caller));
                    }
                }
            }
            return found.ok_or_else(|| {
                AuthError::Unauthenticated("the API key names no configured caller".into())
            });
        }
        if !presented.tls_names.is_empty() {
            return self
                .callers
                .iter()
                .find(|c| {
                    c.caller
                        .tls_names
                        .iter()
                        .any(|n| presented.tls_names.contains(n))
                })
                .cloned()
                .ok_or_else(|| {
                    AuthError::Unauthenticated(format!(
                        "the client certificate's names ({}) match no configured caller",
                        presented.tls_names.join(", ")
                    ))
                });
        }
        if let Some(uid) = presented.unix_uid {
            return self
                .callers
                .iter()
                .find(|c| c.caller.unix_uids.contains(&uid))
                .cloned()
                .ok_or_else(|| {
                    AuthError::Unauthenticated(format!("unix uid {uid} is no configured caller"))
                });
        }
        Err(AuthError::Unauthenticated(
            "no credentials: send `authorization: Bearer <API key>`, a client certificate, or connect over the broker's Unix socket".into(),
        ))
    }
}

/// The key in an `Authorization` (or `Proxy-Authorization`) value `Bearer <key>`; the
/// scheme's case is not significant (RFC 9110 §11.1).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, key) = value.split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// The API key a credential header carries (`value` its text, `None` if not text): none
/// when the header was not sent; refused, naming `header`, when it was sent but holds no
/// `Bearer <key>` (never passed over for another credential).
pub fn sent_key<'a>(
    value: Option<Option<&'a str>>,
    header: &str,
) -> Result<Option<&'a str>, AuthError> {
    match value {
        None => Ok(None),
        Some(text) => text.and_then(bearer).map(Some).ok_or_else(|| {
            AuthError::Unauthenticated(format!("the {header} must be \"Bearer <API key>\""))
        }),
    }
}

/// The SHA-256 of an API key, as the config holds it (64 hex digits).
pub fn api_key_hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(name: &str) -> Caller {
        Caller {
            name: name.into(),
            api_key_sha256: vec![],
            tls_names: vec![],
            unix_uids: vec![],
            orgs: OrgScope::Only(vec!["acme".into()]),
            permissions: vec![Permission::OrgToken],
            rate_limit: None,
        }
    }

    fn hash(key: &str) -> [u8; 32] {
        Sha256::digest(key.as_bytes()).into()
    }

    #[test]
    fn each_mode_names_its_caller() {
        let callers = Callers::new(vec![
            Caller {
                api_key_sha256: vec![hash("k1"), hash("k2")],
                ..caller("payroll")
            },
            Caller {
                tls_names: vec!["spiffe://acme/erp".into()],
                ..caller("erp")
            },
            Caller {
                unix_uids: vec![1001],
                ..caller("cards")
            },
        ]);
        let who = |p: Presented<'_>| callers.authenticate(&p).map(|a| a.caller.name.clone());
        assert_eq!(
            who(Presented {
                api_key: Some("k2"),
                ..Default::default()
            })
            .unwrap(),
            "payroll"
        );
        assert_eq!(
            who(Presented {
                tls_names: vec!["x".into(), "spiffe://acme/erp".into()],
                ..Default::default()
            })
            .unwrap(),
            "erp"
        );
        assert_eq!(
            who(Presented {
                unix_uid: Some(1001),
                ..Default::default()
            })
            .unwrap(),
            "cards"
        );
        for refused in [
            Presented {
                api_key: Some("nope"),
                unix_uid: Some(1001),
                ..Default::default()
            },
            Presented {
                tls_names: vec!["spiffe://acme/other".into()],
                ..Default::default()
            },
            Presented {
                unix_uid: Some(0),
                ..Default::default()
            },
            Presented::default(),
        ] {
            assert!(matches!(who(refused), Err(AuthError::Unauthenticated(_))));
        }
    }

    #[test]
    fn policy_names_the_missing_permission_or_org() {
        let a = Authenticated::new(caller("payroll"));
        assert!(a.authorize(Permission::OrgToken, "acme").is_ok());
        let e = a.authorize(Permission::Refresh, "acme").unwrap_err();
        assert!(
            matches!(&e, AuthError::PermissionDenied(m) if m.contains("refresh")),
            "{e}"
        );
        let e = a.authorize(Permission::OrgToken, "globex").unwrap_err();
        assert!(
            matches!(&e, AuthError::PermissionDenied(m) if m.contains("globex")),
            "{e}"
        );
    }

    #[test]
    fn no_callers_means_open_and_the_bucket_limits_a_caller() {
        let open = Callers::new(vec![]);
        assert_eq!(
            open.authenticate(&Presented::default())
                .unwrap()
                .caller
                .name,
            "anonymous"
        );
        let one = NonZeroU32::MIN;
        let limited = Authenticated::new(Caller {
            rate_limit: Some(RateLimit {
                per_second: one,
                burst: NonZeroU32::new(2).unwrap(),
            }),
            ..caller("x")
        });
        assert!(limited.admit().is_ok() && limited.admit().is_ok());
        assert!(matches!(limited.admit(), Err(AuthError::RateLimited(_))));
        assert_eq!(bearer("Bearer k1"), Some("k1"));
        assert_eq!(bearer("bearer  k1 "), Some("k1"));
        assert_eq!(bearer("Basic k1"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(
            api_key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
