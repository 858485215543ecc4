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
    /// The server's TLS private key, PEM.
    PrivateKey
);

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
