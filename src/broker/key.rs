//! Token keys: an org, or one user of an org. Ids arrive from callers, so they are checked
//! here before they reach a map or the platform.

use std::{fmt, hash, ops::Deref, sync::Arc};

use super::BrokerError;

/// The longest org name or user id accepted, in bytes.
pub const MAX_ID_LEN: usize = 256;

/// What a token belongs to: the organization itself, or one of its users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenKey {
    pub org: Arc<str>,
    pub user: Option<UserId>,
}

/// A user id, held inside its key up to 38 bytes (32-character person ids and
/// ExternalSourceIDs such as `EMP-00042` alike), shared on the heap beyond that. Finding a
/// user's slot compares the id it holds: inline, that reads memory the lookup touches
/// anyway instead of one more allocation, and saves that allocation (BENCHMARKS.md).
#[derive(Clone)]
pub enum UserId {
    /// Up to [`UserId::INLINE`] bytes, in place.
    Inline {
        len: u8,
        bytes: [u8; UserId::INLINE],
    },
    /// A longer id.
    Shared(Arc<str>),
}

impl UserId {
    /// The longest id kept inline: the enum is 40 bytes, which keeps a slot within
    /// jemalloc's 256-byte class (see the slot's size test).
    pub const INLINE: usize = 38;

    pub fn as_str(&self) -> &str {
        match self {
            // Always the bytes of a whole `&str` (see `From<&str>`), so always UTF-8.
            Self::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Self::Shared(id) => id,
        }
    }

    /// The id's bytes, without the UTF-8 check `as_str` makes: what lookups compare.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Self::Shared(id) => id.as_bytes(),
        }
    }
}

impl From<&str> for UserId {
    fn from(id: &str) -> Self {
        match u8::try_from(id.len()) {
            Ok(len) if id.len() <= Self::INLINE => {
                let mut bytes = [0; Self::INLINE];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Shared(id.into()),
        }
    }
}

impl Deref for UserId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

// As the `str` it holds, however it is held.
impl PartialEq for UserId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for UserId {}

impl hash::Hash for UserId {
    fn hash<H: hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
    fn user_ids_are_held_inline_up_to_38_bytes_and_read_back_whole() {
        assert_eq!(size_of::<Option<UserId>>(), 40);
        for (id, inline) in [
            ("EMP-00042", true),
            ("8ab28c3e6f8023c3016f8046be110002", true),
            ("ünïcödé-EMP-000042-ünïcödé-042", true),
            (&"x".repeat(38), true),
            (&"x".repeat(39), false),
            (&"x".repeat(256), false),
        ] {
            let user = UserId::from(id);
            assert_eq!(matches!(user, UserId::Inline { .. }), inline, "{id}");
            assert_eq!(user.as_str(), id);
            assert_eq!(format!("{user:?}"), format!("{id:?}"));
            assert_eq!(user, UserId::Shared(id.into()), "equal however held");
        }
        // Equal ids hash alike however they are held (maps and sets rely on it).
        use std::hash::BuildHasher;
        let state = std::hash::RandomState::new();
        assert_eq!(
            state.hash_one(UserId::from("EMP-1")),
            state.hash_one(UserId::Shared("EMP-1".into()))
        );
    }

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
