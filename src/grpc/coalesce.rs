//! Flush consolidation for server connections: a connection's first write of a burst
//! yields once to the scheduler, so the frames other tasks are about to queue on the same
//! connection go out in the same system call.
//!
//! Without it a watch fan-out costs one `writev` per message: each stream's task queues
//! its frame and wakes the connection task, which tokio runs next (its LIFO slot), and the
//! connection writes that one frame before the next stream runs. Yielding puts the
//! connection task behind the streams already woken; when it runs again it writes all of
//! their frames at once. Netty's `FlushConsolidationHandler` does the same for the same
//! reason. Unary calls pay one extra poll of the connection task per write burst.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// An accepted connection whose writes are consolidated (see the module docs).
#[derive(Debug)]
pub struct Coalesced<IO> {
    io: IO,
    /// This burst has yielded once already; cleared when the burst ends with a flush.
    yielded: bool,
}

impl<IO> Coalesced<IO> {
    pub fn new(io: IO) -> Self {
        Self { io, yielded: false }
    }

    /// Yields once per write burst: wakes this task (which tokio then queues behind the
    /// tasks already woken, not in its LIFO slot) and reports the socket not ready.
    fn defer(&mut self, cx: &mut Context<'_>) -> bool {
        if self.yielded {
            return false;
        }
        self.yielded = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Coalesced<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesced<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.defer(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.defer(cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if flushed.is_ready() {
            self.yielded = false;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Coalesced<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_write_of_a_burst_yields_once_and_all_bytes_arrive() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut a = Coalesced::new(a);
        // The first attempt of a burst is not ready, and has woken its task to try again.
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut a).poll_write(&mut cx, b"one").is_pending());
        // The retry and the rest of the burst write straight through.
        a.write_all(b"one").await.expect("write");
        a.write_all(b"two").await.expect("write");
        a.flush().await.expect("flush");
        assert!(!a.yielded, "a flush ends the burst");
        a.write_all(b"three").await.expect("write after a flush");
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).await.expect("read");
        assert_eq!(got, "onetwothree");
    }
}
