//! Where the server takes connections from: a TCP listener, or a Unix socket whose file
//! is replaced only when no live broker answers on it.

use tokio::net::{TcpListener, UnixListener};

use crate::config::Listen;

/// A bound listener: TCP, or a Unix socket.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `listen`. A Unix socket file left by an earlier run is replaced, but only when
    /// no one answers on it: a second broker on the same path is refused (`AddrInUse`)
    /// rather than taking the path from a live one.
    pub async fn bind(listen: &Listen) -> std::io::Result<Self> {
        match listen {
            Listen::Tcp(addr) => Ok(Self::Tcp(TcpListener::bind(addr).await?)),
            Listen::Unix(path) => {
                if std::fs::symlink_metadata(path).is_ok_and(|m| {
                    use std::os::unix::fs::FileTypeExt;
                    m.file_type().is_socket()
                }) {
                    // Only a refused connection says no one listens; a full backlog
                    // (`WouldBlock`) or anything else is not proof of a stale file.
                    match tokio::net::UnixStream::connect(path).await {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            std::fs::remove_file(path)?;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        _ => {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                format!("a process is listening on {} already", path.display()),
                            ));
                        }
                    }
                }
                Ok(Self::Unix(UnixListener::bind(path)?))
            }
        }
    }

    /// The bound address, for logs.
    pub fn local_addr(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Self::Unix(l) => l
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix://{}", p.display())))
                .unwrap_or_default(),
        }
    }
}

impl From<TcpListener> for Listener {
    fn from(listener: TcpListener) -> Self {
        Self::Tcp(listener)
    }
}
