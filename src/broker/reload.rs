//! A new configuration of orgs, applied while the broker runs: added orgs start, removed
//! orgs stop (their watchers are told), and changed endpoints or secrets take effect at
//! the next request to the platform, with the tokens already held kept.

use crate::sync::RwLockUnpoisoned;
use std::{collections::HashSet, sync::Arc};

use tracing::info;

use super::{
    Broker, Credentials, Gone, GoneReason, Org, OrgConfig, OrgSettings, Token,
    slot::{Slot, Turn},
};

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrgChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

impl Broker {
    /// Makes `orgs` the configured orgs.
    pub async fn reload_orgs(&self, orgs: Vec<OrgSettings>) -> OrgChanges {
        let mut changes = OrgChanges::default();
        let wanted: HashSet<String> = orgs.iter().map(|o| o.name.clone()).collect();
        for org in self.all_orgs() {
            if !wanted.contains(&*org.name) {
                self.remove_org(&org, "org removed from the broker's configuration");
                changes.removed.push(org.name.to_string());
            }
        }
        for settings in orgs {
            let existing = self
                .org(&settings.name)
                .ok()
                .filter(|o| *o.name == settings.name);
            match existing {
                None => {
                    changes.added.push(settings.name.clone());
                    self.add_org(settings);
                }
                Some(org)
                    if org.is_static()
                        != matches!(settings.credentials, Credentials::Static(_)) =>
                {
                    // From a client secret to a long-lived token or back: a new org.
                    self.remove_org(&org, "org reconfigured with another kind of credential");
                    changes.updated.push(settings.name.clone());
                    self.add_org(settings);
                }
                Some(org) => {
                    if self.update_org(&org, settings).await {
                        changes.updated.push(org.name.to_string());
                    }
                }
            }
        }
        if changes != OrgChanges::default() {
            info!(added = ?changes.added, removed = ?changes.removed, updated = ?changes.updated, "orgs reloaded");
        }
        changes
    }

    /// Swaps an org's endpoints and credentials; true if anything changed.
    async fn update_org(&self, org: &Arc<Org>, settings: OrgSettings) -> bool {
        let old = org.config();
        let same = old.client.token_url == settings.client.token_url
            && old.client.authorization_grant_url == settings.client.authorization_grant_url
            && old.client.client_id == settings.client.client_id
            && same_credentials(&old.credentials, &settings.credentials);
        if same {
            return false;
        }
        let new_static = match &settings.credentials {
            Credentials::Static(token) => Some(token.clone()),
            Credentials::Client { .. } => None,
        };
        *org.config.write_unpoisoned() = Arc::new(OrgConfig {
            client: settings.client,
            credentials: settings.credentials,
        });
        org.secret_in_use
            .store(0, std::sync::atomic::Ordering::Relaxed);
        if let Some(token) = new_static {
            install_long_lived(&org.slot, token).await;
        }
        true
    }

    /// Stops an org: no more renewals, and every watcher of its keys is told.
    fn remove_org(&self, org: &Arc<Org>, why: &str) {
        self.inner.orgs.remove(&org.name);
        let users: Vec<Arc<Slot>> = org.users.write_unpoisoned().drain().collect();
        for slot in users.iter().chain([&org.slot]) {
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

fn same_credentials(a: &Credentials, b: &Credentials) -> bool {
    match (a, b) {
        (Credentials::Static(x), Credentials::Static(y)) => x == y,
        (
            Credentials::Client {
                client_id: i,
                secrets: s,
            },
            Credentials::Client {
                client_id: j,
                secrets: t,
            },
        ) => i == j && s == t,
        _ => false,
    }
}

/// Replaces a long-lived token in its slot as the key's next generation.
async fn install_long_lived(slot: &Arc<Slot>, token: crate::secret::AccessToken) {
    let flight = loop {
        if let Turn::Mine(flight) = slot.turn().await {
            break flight;
        }
    };
    let generation = {
        let mut state = flight.state();
        state.generation += 1;
        state.generation
    };
    let mut long_lived = Token::long_lived(token);
    long_lived.generation = generation;
    flight.land(&Ok(Arc::new(long_lived)), None);
}
