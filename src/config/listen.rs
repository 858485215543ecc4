//! Where the broker listens: a TCP address, or a Unix socket (`unix:///path`).

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr};

/// A listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// `IP:PORT`.
    Tcp(SocketAddr),
    /// `unix:///path/to/socket`: callers are named by their uid.
    Unix(PathBuf),
}

impl Listen {
    /// Reachable only from this machine: loopback, or a Unix socket.
    pub fn is_local(&self) -> bool {
        match self {
            Self::Tcp(addr) => addr.ip().is_loopback(),
            Self::Unix(_) => true,
        }
    }
}

impl FromStr for Listen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{text:?}: a Unix socket path must be absolute, e.g. \"unix:///run/tokenbroker.sock\""
                ));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        text.parse().map(Self::Tcp).map_err(|_| {
            format!("{text:?} is neither IP:PORT nor unix:///path; write e.g. \"127.0.0.1:50051\" or \"unix:///run/tokenbroker.sock\"")
        })
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tcp_and_unix() {
        assert_eq!(
            "127.0.0.1:1".parse::<Listen>().unwrap().to_string(),
            "127.0.0.1:1"
        );
        let unix: Listen = "unix:///run/tb.sock".parse().unwrap();
        assert_eq!(unix, Listen::Unix("/run/tb.sock".into()));
        assert!(unix.is_local());
        assert!(!"0.0.0.0:50051".parse::<Listen>().unwrap().is_local());
        assert!("[::1]:50051".parse::<Listen>().unwrap().is_local());
        assert!("unix://relative".parse::<Listen>().is_err());
        assert!("localhost:50051".parse::<Listen>().is_err());
    }
}
