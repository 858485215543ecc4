//! A new configuration of orgs, applied while the broker runs: added orgs start, removed
//! orgs stop (their watchers are told), and changed endpoints or secrets take effect at
//! the next request to the platform, with the tokens already held kept.

use std::{collections::HashSet, sync::Arc};

use tracing::info;

use super::{
    Credentials, OrgSettings, Token,
    org::Org,
    orgs::Orgs,
    slot::{Slot, Turn},
};

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrgChanges {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub updated: Vec<String>,
}

/// Makes `settings` the orgs of `orgs`; `start` adds (or replaces) one, `forget` drops
/// what is kept of a removed one.
pub(super) async fn apply(
    orgs: &Orgs,
    settings: Vec<OrgSettings>,
    start: impl Fn(OrgSettings),
    forget: impl Fn(&str),
) -> OrgChanges {
    let mut changes = OrgChanges::default();
    let wanted: HashSet<String> = settings.iter().map(|o| o.name.clone()).collect();
    for org in orgs.all() {
        if !wanted.contains(&*org.name) {
            remove(orgs, &org, "org removed from the broker's configuration");
            forget(&org.name);
            changes.removed.push(org.name.to_string());
        }
    }
    for settings in settings {
        match orgs.get(&settings.name) {
            None => {
                changes.added.push(settings.name.clone());
                start(settings);
            }
            Some(org)
                if org.is_static() != matches!(settings.credentials, Credentials::Static(_)) =>
            {
                // From a client secret to a long-lived token or back: a new org.
                remove(
                    orgs,
                    &org,
                    "org reconfigured with another kind of credential",
                );
                forget(&org.name);
                changes.updated.push(settings.name.clone());
                start(settings);
            }
            Some(org) => {
                let new_static = match &settings.credentials {
                    Credentials::Static(token) => Some(token.clone()),
                    Credentials::Client { .. } => None,
                };
                if org.reconfigure(settings) {
                    if let Some(token) = new_static {
                        install_long_lived(&org.slot, token).await;
                    }
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

/// Stops an org: no more renewals, and every watcher of its keys is told.
fn remove(orgs: &Orgs, org: &Arc<Org>, why: &str) {
    orgs.remove(&org.name);
    org.retire(why);
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
