//! The org registry: the configured orgs by name, and the one lookup each call makes (the
//! only org when a request names none; errors that list only the orgs the caller may use).

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use super::{BrokerError, check_id, org::Org};
use crate::sync::RwLockUnpoisoned;

/// The configured orgs, replaced one by one as reloads add and remove them.
#[derive(Debug, Default)]
pub(super) struct Orgs {
    by_name: RwLock<HashMap<Arc<str>, Arc<Org>>>,
}

impl Orgs {
    pub fn insert(&self, org: Arc<Org>) {
        self.by_name
            .write_unpoisoned()
            .insert(Arc::clone(&org.name), org);
    }

    pub fn remove(&self, name: &str) {
        self.by_name.write_unpoisoned().remove(name);
    }

    /// The org named exactly `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Org>> {
        self.by_name.read_unpoisoned().get(name).cloned()
    }

    /// Every org now configured.
    pub fn all(&self) -> Vec<Arc<Org>> {
        self.by_name.read_unpoisoned().values().cloned().collect()
    }

    /// The names of the orgs now configured, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .by_name
            .read_unpoisoned()
            .keys()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    /// The org `name` refers to (the only org, when `name` is empty). Errors list the orgs
    /// for which `visible` is true, never the others.
    pub fn find(
        &self,
        name: &str,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Arc<Org>, BrokerError> {
        {
            let orgs = self.by_name.read_unpoisoned();
            if name.is_empty()
                && orgs.len() == 1
                && let Some(org) = orgs.values().next()
            {
                return Ok(Arc::clone(org));
            }
            if let Some(org) = orgs.get(name) {
                return Ok(Arc::clone(org));
            }
        }
        let listed = || {
            let names: Vec<String> = self.names().into_iter().filter(|n| visible(n)).collect();
            names.join(", ")
        };
        if name.is_empty() {
            return Err(BrokerError::InvalidArgument {
                field: "org",
                problem: format!(
                    "is required when several orgs are configured ({})",
                    listed()
                ),
            });
        }
        check_id("org", name)?;
        Err(BrokerError::UnknownOrg {
            org: name.to_owned(),
            known: listed(),
        })
    }
}
