//! Unix-socket connections from standard gRPC clients: grpcio sends the socket's path as
//! `:authority` (`tmp%2Fbroker.sock`), grpc-go and grpcurl send it as is
//! (`/tmp/broker.sock`), and h2 resets every such stream with PROTOCOL_ERROR, since that
//! is not a host (hyperium/h2#487, open since 2020). So a Unix connection's frames from the
//! client pass through h2's own codec here, which drops an `:authority` that is not a
//! host before the server sees it; the answers pass back untouched.
//!
//! The broker routes by path alone, so the authority carries nothing it needs. TCP
//! connections never come through here: their clients name a host.

use std::{
    io,
    pin::{Pin, pin},
    task::{Context, Poll},
};

use futures::{SinkExt, StreamExt};
use h2::{Codec, frame::Frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tonic::transport::server::{Connected, UdsConnectInfo};

/// The HTTP/2 client preface, which precedes the frames.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The server's end of a Unix connection whose client frames are filtered (see the module
/// docs); it carries the client's credentials for the uid check.
#[derive(Debug)]
pub struct Lenient {
    io: DuplexStream,
    info: UdsConnectInfo,
}

impl Lenient {
    /// Starts filtering `client`'s frames on a task of its own, which ends with the
    /// connection.
    pub fn new(client: tokio::net::UnixStream) -> Self {
        let info = client.connect_info();
        let (server_end, filter_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            if let Err(e) = relay(client, filter_end).await {
                tracing::debug!(error = %e, "unix connection closed");
            }
        });
        Self {
            io: server_end,
            info,
        }
    }
}

/// Copies `client`'s frames to `server` (without an `:authority` that is not a host) and
/// `server`'s bytes back to `client`, until the server closes, or the client closes and
/// the server has answered.
async fn relay(client: tokio::net::UnixStream, server: DuplexStream) -> io::Result<()> {
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = tokio::io::split(server);
    let up = async move {
        let mut preface = [0u8; PREFACE.len()];
        from_client.read_exact(&mut preface).await?;
        to_server.write_all(&preface).await?;
        if &preface != PREFACE {
            // Not HTTP/2: the server says so and closes.
            return to_server.shutdown().await;
        }
        let mut frames: Codec<_, bytes::Bytes> =
            Codec::new(tokio::io::join(from_client, tokio::io::sink()));
        let mut out: Codec<_, bytes::Bytes> =
            Codec::new(tokio::io::join(tokio::io::empty(), to_server));
        while let Some(frame) = frames.next().await {
            let frame = frame.map_err(|e| io::Error::other(format!("{e:?}")))?;
            let frame = match frame {
                Frame::Headers(mut headers) => {
                    let pseudo = headers.pseudo_mut();
                    if pseudo
                        .authority
                        .as_ref()
                        .is_some_and(|a| http::uri::Authority::try_from(a.as_bytes()).is_err())
                    {
                        pseudo.authority = None;
                    }
                    Frame::Headers(headers)
                }
                // Advisory only (and deprecated by RFC 9113); h2 cannot write them.
                Frame::Priority(_) => continue,
                frame => frame,
            };
            out.send(frame).await.map_err(io::Error::other)?;
        }
        out.get_mut().writer_mut().shutdown().await
    };
    let mut down = pin!(tokio::io::copy(&mut from_server, &mut to_client));
    let mut up = pin!(up);
    tokio::select! {
        done = &mut up => {
            done?;
            down.await?;
        }
        done = &mut down => {
            done?;
        }
    }
    Ok(())
}

impl AsyncRead for Lenient {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Lenient {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Lenient {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}
