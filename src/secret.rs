//! Secrets as newtypes: they print as `[redacted]`, are wiped from memory when dropped, and
//! are told apart in logs only by a short fingerprint.

use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroize;

/// The text of a secret. Only `expose` gives it out; `Debug` and `Display` never do.
#[derive(Clone, PartialEq, Eq)]
struct SecretText(Box<str>);

impl SecretText {
    fn fingerprint(&self) -> Fingerprint {
        let digest = Sha256::digest(self.0.as_bytes());
        Fingerprint([digest[0], digest[1], digest[2], digest[3]])
    }
}

impl Drop for SecretText {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The first 4 bytes of a secret's SHA-256, as 8 hex digits: enough to tell tokens apart in
/// a log, useless for recovering them.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 4]);

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One write of eight hex digits: every audit line carries a fingerprint.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut hex = [0u8; 8];
        for (i, b) in self.0.iter().enumerate() {
            hex[2 * i] = HEX[usize::from(b >> 4)];
            hex[2 * i + 1] = HEX[usize::from(b & 0xf)];
        }
        f.write_str(std::str::from_utf8(&hex).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

macro_rules! secret_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(SecretText);

        impl $name {
            /// Wraps a secret value.
            pub fn new(value: impl Into<String>) -> Self {
                Self(SecretText(value.into().into_boxed_str()))
            }

            /// The secret itself, for the one place that must send it.
            pub fn expose(&self) -> &str {
                &self.0 .0
            }

            /// A short, non-reversible name for this value, for logs.
            pub fn fingerprint(&self) -> Fingerprint {
                self.0.fingerprint()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([redacted])"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

secret_type!(
    /// An OAuth client secret, read from the environment or a file.
    ClientSecret
);
secret_type!(
    /// An access token: handed to callers, never logged.
    AccessToken
);
secret_type!(
    /// A single-use refresh token. It never leaves the broker.
    RefreshToken
);
secret_type!(
    /// A single-use authorization code from the grant endpoint.
    AuthCode
);
secret_type!(
    /// A Redis URL (`store.redis_url`): it may carry a password, so it is never shown.
    RedisUrl
);
secret_type!(
    /// The server's TLS private key, PEM.
    PrivateKey
);

/// A 32-byte key that seals the token store's records (`store.encryption_key_env`): read
/// as 64 hex digits or base64, wiped when dropped, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey(Box<[u8; 32]>);

impl StoreKey {
    /// The key written as 64 hex digits or as base64 (with or without padding).
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        use base64::Engine;
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|_| "is not hex")?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
                .map_err(|_| "is neither 64 hex digits nor base64")?
        };
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(
            |_| "is not 32 bytes; make one with `tokenbroker gen-store-key` (64 hex digits)",
        )?;
        Ok(Self(Box::new(key)))
    }

    /// A fresh random key.
    pub fn generate() -> Self {
        Self(Box::new(rand::random()))
    }

    /// The key's bytes, for the one place that seals and opens with it.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits: what `gen-store-key` prints.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0.as_slice())
    }
}

impl Drop for StoreKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = ClientSecret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "ClientSecret([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        let r = RefreshToken::new("9MXOgvKAvB+tUSdCtML9u");
        assert!(!format!("{r:?} {r} {:?}", Some(&r)).contains("9MXO"));
        assert_eq!(s.expose(), "hunter2-very-secret");
    }

    #[test]
    fn store_keys_read_as_hex_or_base64_and_never_print() {
        let key = StoreKey::generate();
        let hex = key.to_hex();
        assert_eq!(StoreKey::parse(&hex), Ok(key.clone()));
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.expose());
        assert_eq!(StoreKey::parse(&b64), Ok(key.clone()));
        assert_eq!(StoreKey::parse(b64.trim_end_matches('=')), Ok(key.clone()));
        assert!(StoreKey::parse("abcd").is_err());
        assert!(StoreKey::parse(&"ab".repeat(31)).is_err());
        assert!(!format!("{key:?}").contains(&hex[..8]));
    }

    #[test]
    fn fingerprint_is_stable_short_and_distinct() {
        let a = AccessToken::new("token-a");
        assert_eq!(a.fingerprint(), AccessToken::new("token-a").fingerprint());
        assert_ne!(a.fingerprint(), AccessToken::new("token-b").fingerprint());
        let shown = a.fingerprint().to_string();
        let expected: String = a
            .fingerprint()
            .0
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(shown, expected);
        assert_eq!(shown.len(), 8);
        let shown = a.fingerprint().to_string();
        assert_eq!(shown.len(), 8);
        assert!(shown.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
