//! Token keys: an org, or one user of an org. Ids arrive from callers, so they are checked
//! here before they reach a map or the platform.

use std::{fmt, sync::Arc};

use super::BrokerError;

/// The longest org name or user id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// What a token belongs to: the organization itself, or one of its users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub org: Arc<str>,
    pub user: Option<Arc<str>>,
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.user {
            None => write!(f, "org {}", self.org),
            Some(user) => write!(f, "user {user:?} of org {}", self.org),
        }
    }
}

/// Checks a caller-supplied id: present, at most 256 bytes, no control characters.
pub fn check_id(field: &'static str, value: &str) -> Result<(), BrokerError> {
    // The usual id (person ids, ExternalSourceIDs): printable ASCII without spaces, which
    // passes every check below; one pass over its bytes says so.
    if (1..=MAX_ID_LEN).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic()) {
        return Ok(());
    }
    let problem = if value.is_empty() {
        "is required".to_owned()
    } else if value.len() > MAX_ID_LEN {
        format!("is {} bytes long; the limit is {MAX_ID_LEN}", value.len())
    } else if value.chars().any(char::is_control) {
        "holds control characters".to_owned()
    } else if value.trim() != value {
        "has leading or trailing white space".to_owned()
    } else {
        return Ok(());
    };
    Err(BrokerError::InvalidArgument { field, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(check_id("user_id", "8ab28c3e6f8023c3016f8046be110002").is_ok());
        assert!(check_id("user_id", "EMP-0001").is_ok());
        assert!(check_id("user_id", &"x".repeat(MAX_ID_LEN)).is_ok());
        for bad in ["", " a", "a\n", "a\u{0}b", "tab\there"] {
            assert!(check_id("user_id", bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(MAX_ID_LEN + 1);
        let e = check_id("user_id", &long).unwrap_err();
        assert_eq!(e.to_string(), "user_id is 257 bytes long; the limit is 256");
    }
}
