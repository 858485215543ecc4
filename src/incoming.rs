//! The accept loop of the gRPC listener and the proxy's: a bounded number of connections,
//! a deadline for each to finish its handshake (TLS, then its first 24 bytes: the HTTP/2
//! preface, or more than an HTTP/1 request line), and accept errors (out of file
//! descriptors) logged and backed off instead of spun on.
//!
//! hyper's HTTP/2 keepalive starts only once the preface is in, and tonic's accept loop
//! retries a failing `accept` at once: without this, silent sockets are held forever and,
//! at the open-file limit, the loop spins a core on `EMFILE` while new clients wait
//! unanswered in the backlog. Here a connection takes a place before it is accepted (at the
//! limit, new clients wait in the kernel's backlog, their descriptors not yet ours), and
//! gives it back when it closes; one that has not sent the preface by its deadline is
//! closed.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{OwnedSemaphorePermit, Semaphore, mpsc},
    time::{Instant, Sleep},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

/// The HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`: its bytes end the handshake.
const PREFACE_LEN: usize = 24;

/// Bounds on the server's connections: one set of places, shared by every listener
/// given a clone (the gRPC listener and the proxy's), so that together they stay within
/// `server.max_connections`.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// A place per connection open; at none left, new clients wait in the listen backlog.
    places: Arc<Semaphore>,
    /// A connection that has not finished TLS and sent its first bytes within this after
    /// it was accepted is closed.
    pub handshake_timeout: Duration,
}

impl ConnectionLimits {
    /// At most `max_connections` open at once, each given `handshake_timeout`.
    pub fn new(max_connections: usize, handshake_timeout: Duration) -> Self {
        Self {
            places: Arc::new(Semaphore::new(max_connections)),
            handshake_timeout,
        }
    }
}

/// A listener the accept loop takes connections from.
pub trait Accept: Send + 'static {
    type Io: Send + 'static;
    fn accept(&self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        Ok(tokio::net::TcpListener::accept(self).await?.0)
    }
}

impl Accept for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Io> {
        Ok(tokio::net::UnixListener::accept(self).await?.0)
    }
}

/// The connections accepted on `listener`, each passed through `handshake` (TLS, or
/// nothing) within `limits.handshake_timeout`. The loop runs on its own task until the
/// stream is dropped (the server stops accepting), which closes the listener.
pub fn connections<L, H, F, T>(
    listener: L,
    limits: ConnectionLimits,
    handshake: H,
) -> impl Stream<Item = io::Result<Guarded<T>>>
where
    L: Accept,
    H: Fn(L::Io) -> F + Send + 'static,
    F: Future<Output = io::Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let places = limits.places;
    tokio::spawn(async move {
        let mut backoff = Backoff::default();
        loop {
            let place = tokio::select! {
                () = tx.closed() => return,
                place = Arc::clone(&places).acquire_owned() => match place {
                    Ok(place) => place,
                    Err(_) => return,
                },
            };
            let io = loop {
                tokio::select! {
                    () = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(io) => {
                            backoff.recovered();
                            break io;
                        }
                        // The client gave up between its connect and our accept.
                        Err(e) if is_per_connection(&e) => {}
                        Err(e) => tokio::time::sleep(backoff.failed(&e)).await,
                    },
                }
            };
            let deadline = Instant::now() + limits.handshake_timeout;
            let handshake = handshake(io);
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(io)) => {
                        let _ = tx.send(Ok(Guarded::new(io, deadline, place))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "connection handshake failed"),
                    Err(_) => tracing::debug!("connection closed: no TLS handshake in time"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// Errors of one connection, not of the listener: the next accept may succeed at once.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The wait after a failing `accept` (`EMFILE`, `ENFILE`, `ENOBUFS`): doubling from 10 ms
/// to 1 s while it fails, logged when it starts and when it clears.
#[derive(Debug, Default)]
struct Backoff {
    failures: u64,
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn failed(&mut self, e: &io::Error) -> Duration {
        if self.failures == 0 {
            tracing::warn!(
                error = %e,
                "cannot accept connections; retrying with backoff (out of file descriptors? lower server.max_connections or raise the open-file limit)"
            );
        }
        self.failures += 1;
        self.delay = (self.delay * 2).clamp(Self::FIRST, Self::MAX);
        self.delay
    }

    fn recovered(&mut self) {
        if self.failures > 0 {
            tracing::warn!(failed = self.failures, "accepting connections again");
            *self = Self::default();
        }
    }
}

/// An accepted connection: holds its place among `max_connections` until it closes, and
/// fails its reads once its handshake deadline passes before the HTTP/2 preface is in.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    /// Until the preface is in: the deadline, and how many of its bytes are still to come.
    handshake: Option<(Pin<Box<Sleep>>, usize)>,
    _place: OwnedSemaphorePermit,
}

impl<IO> Guarded<IO> {
    /// The connection inside (its peer's address, its TLS session).
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn new(io: IO, deadline: Instant, place: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            handshake: Some((Box::pin(tokio::time::sleep_until(deadline)), PREFACE_LEN)),
            _place: place,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some((deadline, left)) = &mut this.handshake else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if deadline.as_mut().poll(cx).is_ready() {
            tracing::debug!("connection closed: no HTTP/2 preface within server.handshake_timeout");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface within the handshake timeout",
            )));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = read {
            let n = buf.filled().len() - before;
            if n >= *left {
                this.handshake = None;
            } else {
                *left -= n;
            }
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The process's soft limit on open files (`/proc/self/limits`), when it can be read.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The default `server.max_connections` under an open-file limit: three quarters of it,
/// leaving the rest for the platform's connections, files and the metrics listener.
pub fn default_max_connections(open_file_limit: Option<u64>) -> usize {
    let limit = open_file_limit.unwrap_or(1024);
    usize::try_from(limit / 4 * 3).unwrap_or(usize::MAX).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn the_open_file_limit_is_read_from_proc_limits() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             127451               127451               processes\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_file_limit(text), Some(1024));
        assert_eq!(
            parse_open_file_limit("Max open files unlimited unlimited files"),
            None
        );
        assert_eq!(default_max_connections(Some(1024)), 768);
        assert_eq!(default_max_connections(Some(20)), 16);
        assert_eq!(default_max_connections(None), 768);
        assert!(open_file_limit().is_some(), "readable on Linux");
    }

    #[test]
    fn accept_failures_back_off_doubling_to_a_second_and_reset_once_one_succeeds() {
        let mut backoff = Backoff::default();
        let e = io::Error::from_raw_os_error(24); // EMFILE
        let delays: Vec<u128> = (0..9).map(|_| backoff.failed(&e).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.recovered();
        assert_eq!(backoff.failed(&e), Backoff::FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_at_its_deadline_and_gives_its_place_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let limits = ConnectionLimits::new(1, Duration::from_secs(5));
        let mut accepted = Box::pin(connections(listener, limits, |io| async move {
            Ok::<_, io::Error>(io)
        }));
        let _silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut first = accepted.next().await.expect("a connection").expect("ok");
        // The one place is taken: the next client waits in the backlog.
        let mut speaker = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let waiting = tokio::time::timeout(Duration::from_secs(1), accepted.next()).await;
        assert!(
            waiting.is_err(),
            "no second connection while the first holds the place"
        );
        // The silent one's read fails at its deadline; closing it frees the place.
        let mut buf = [0u8; 8];
        let read = first.read(&mut buf).await;
        assert_eq!(read.expect_err("timed out").kind(), io::ErrorKind::TimedOut);
        drop(first);
        let mut second = accepted.next().await.expect("a connection").expect("ok");
        // A client that sends the preface is past its deadline for good.
        speaker
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nmore")
            .await
            .expect("write");
        let mut got = vec![0u8; 28];
        second.read_exact(&mut got).await.expect("read");
        tokio::time::sleep(Duration::from_secs(60)).await;
        speaker.write_all(b"late").await.expect("write");
        second
            .read_exact(&mut got[..4])
            .await
            .expect("no deadline after the preface");
        assert_eq!(&got[..4], b"late");
    }
}
