//! One configured org: its endpoints and credentials (swapped whole by a reload), the slot
//! of its own token, its users' slots, and which client secret worked last.

use crate::sync::RwLockUnpoisoned;
use std::sync::{
    Arc, RwLock,
    atomic::{AtomicUsize, Ordering},
};

use super::{Gone, GoneReason, Token, TokenKey, restore::Restored, slot::Slot, users::Users};
use crate::{
    secret::{AccessToken, ClientSecret},
    upstream,
};

/// How the broker proves itself to the platform for one org.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// OAuth client credentials: tokens are issued and rotated. Several secrets are tried
    /// in order (the last one that worked first), so a secret can be rotated at the
    /// platform without downtime. No secret at all: the client proves itself with the
    /// key of its `upstream::Client` (`private_key_jwt`).
    Client {
        client_id: String,
        secrets: Vec<ClientSecret>,
    },
    /// A long-lived access token or API key: handed out as the org token, never rotated.
    Static(AccessToken),
}

impl Credentials {
    fn same_as(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Static(x), Self::Static(y)) => x == y,
            (
                Self::Client {
                    client_id: i,
                    secrets: s,
                },
                Self::Client {
                    client_id: j,
                    secrets: t,
                },
            ) => i == j && s == t,
            _ => false,
        }
    }
}

/// One configured organization.
#[derive(Debug, Clone)]
pub struct OrgSettings {
    pub name: String,
    pub client: upstream::Client,
    pub credentials: Credentials,
}

/// A configured org and its cache.
#[derive(Debug)]
pub(super) struct Org {
    pub name: Arc<str>,
    /// The org token's slot.
    pub slot: Arc<Slot>,
    pub users: Users,
    /// Where and how to ask the platform; swapped whole by a reload.
    config: RwLock<Arc<OrgConfig>>,
    /// Index of the client secret that worked last.
    secret_in_use: AtomicUsize,
}

/// An org's endpoints and credentials.
#[derive(Debug)]
pub(super) struct OrgConfig {
    pub client: upstream::Client,
    pub credentials: Credentials,
}

/// A configured org, as a call found it: its name, and its cache for the fast paths
/// ([`super::Broker::cached_org_token`], [`super::Broker::cached_user_token`]).
#[derive(Debug, Clone)]
pub struct OrgRef(pub(super) Arc<Org>);

impl OrgRef {
    /// The org's configured name.
    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }
}

impl Org {
    /// A new org holding its long-lived token, or what `restored` holds (nothing, for an
    /// org new to the broker), caching at most `max_users` user tokens.
    pub fn new(settings: OrgSettings, max_users: usize, restored: Restored) -> Arc<Self> {
        let name: Arc<str> = settings.name.into();
        let key = TokenKey {
            org: Arc::clone(&name),
            user: None,
        };
        let slot = match &settings.credentials {
            Credentials::Static(token) => {
                Slot::new(key, Some(Arc::new(Token::long_lived(token.clone()))))
            }
            Credentials::Client { .. } => {
                Slot::at_generation(key, restored.token, restored.generation)
            }
        };
        Arc::new(Org {
            name,
            slot: Arc::new(slot),
            users: Users::new(max_users),
            config: RwLock::new(Arc::new(OrgConfig {
                client: settings.client,
                credentials: settings.credentials,
            })),
            secret_in_use: AtomicUsize::new(0),
        })
    }

    /// The org's current endpoints and credentials.
    pub fn config(&self) -> Arc<OrgConfig> {
        Arc::clone(&self.config.read_unpoisoned())
    }

    /// The platform host its tokens are renewed at (the upstream budget's key).
    pub fn token_host(&self) -> String {
        super::budget::host_of(&self.config().client.token_url)
    }

    pub fn is_static(&self) -> bool {
        matches!(self.config().credentials, Credentials::Static(_))
    }

    /// The slot of `user`, made on first use; and the one dropped to make room for it, if
    /// the cache was full (see [`Users::get_or_insert`]).
    pub fn user_slot(&self, user: &str) -> (Arc<Slot>, Option<Arc<Slot>>) {
        self.users.get_or_insert(user, || {
            let key = TokenKey {
                org: Arc::clone(&self.name),
                user: Some(user.into()),
            };
            Arc::new(Slot::new(key, None))
        })
    }

    /// Adds the slot of `user` as `restored` found it, unless the cache is full or the
    /// user is held already (none then).
    pub fn restore_user(&self, user: &str, restored: Restored) -> Option<Arc<Slot>> {
        let key = TokenKey {
            org: Arc::clone(&self.name),
            user: Some(user.into()),
        };
        self.users.insert_new(user, || {
            Arc::new(Slot::at_generation(
                key,
                restored.token,
                restored.generation,
            ))
        })
    }

    /// Whether `slot` is one this org holds now (not one it dropped or replaced).
    pub fn holds(&self, slot: &Arc<Slot>) -> bool {
        match &slot.key.user {
            None => Arc::ptr_eq(&self.slot, slot),
            Some(user) => self.users.get(user).is_some_and(|s| Arc::ptr_eq(&s, slot)),
        }
    }

    /// The client secret that worked last.
    /// The client secret in use (the one that worked last), if the org has secrets: what
    /// refresh and code exchange authenticate with.
    pub fn secret(&self) -> Option<ClientSecret> {
        match &self.config().credentials {
            Credentials::Client { secrets, .. } => secrets
                .get(self.secret_in_use())
                .or(secrets.first())
                .cloned(),
            Credentials::Static(_) => None,
        }
    }

    pub fn secret_in_use(&self) -> usize {
        self.secret_in_use.load(Ordering::Relaxed)
    }

    /// Records that client secret `i` worked.
    pub fn use_secret(&self, i: usize) {
        self.secret_in_use.store(i, Ordering::Relaxed);
    }

    /// Swaps the org's endpoints and credentials for `settings`' (the first client secret
    /// goes first again); false if nothing changed.
    pub fn reconfigure(&self, settings: OrgSettings) -> bool {
        let old = self.config();
        let same = old.client.token_url == settings.client.token_url
            && old.client.authorization_grant_url == settings.client.authorization_grant_url
            && old.client.client_id == settings.client.client_id
            && old.credentials.same_as(&settings.credentials);
        if same {
            return false;
        }
        *self.config.write_unpoisoned() = Arc::new(OrgConfig {
            client: settings.client,
            credentials: settings.credentials,
        });
        self.use_secret(0);
        true
    }

    /// Takes every slot of the org out of service and tells their watchers `why`.
    pub fn retire(&self, why: &str) {
        for slot in self.users.drain().iter().chain([&self.slot]) {
            slot.retire();
            if let Some(token) = slot.current() {
                let gone = Gone {
                    key: slot.key.clone(),
                    reason: GoneReason::Revoked,
                    detail: why.to_owned(),
                    generation: token.generation,
                };
                slot.announce_gone(&token, gone);
            }
        }
    }
}
