//! What a caller is handed: the token, and the key it was served for by the slot that
//! holds it (what the audit counts hand-outs by).

use std::sync::Arc;

use super::{SharedToken, TokenKey, slot::Slot};

/// A token handed to a caller, and the key it was handed out for.
#[derive(Debug, Clone)]
pub struct Served {
    pub token: SharedToken,
    pub key: KeyRef,
}

/// The key a token was served for, by the slot that holds it: its org and user, and an
/// identity that stays the same for as long as the broker holds the key (for the audit,
/// which counts hand-outs per key without copying its ids).
#[derive(Clone)]
pub struct KeyRef(Arc<Slot>);

impl KeyRef {
    /// The org and user.
    pub fn key(&self) -> &TokenKey {
        &self.0.key
    }

    /// Whether both name the same slot.
    pub fn same(&self, other: &KeyRef) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A number that names the slot while it is held (its address).
    pub fn id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }
}

impl std::fmt::Debug for KeyRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyRef({})", self.0.key)
    }
}

/// `token`, served from `slot`.
pub(super) fn served(slot: Arc<Slot>, token: SharedToken) -> Served {
    Served {
        token,
        key: KeyRef(slot),
    }
}
