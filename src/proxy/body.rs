//! The bodies through the proxy, streamed both ways. A request body up to
//! `proxy.max_retry_body_bytes` is kept whole, so that it can be sent again after a 401;
//! beyond that only what was read while deciding is held, and the rest streams. Both
//! directions are bounded in size and in silence: a caller that stops sending its body, or
//! stops reading its answer, for `proxy.request_timeout`, and a platform that stops
//! reading the body or answering, each end the request, and each is told apart.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    sync::{OwnedSemaphorePermit, mpsc},
    time::{Instant, Sleep},
};

use super::{ProxyLimits, reply::ProxyError};

/// A request body ready to go to the platform.
pub enum Outgoing {
    /// Read whole: it may be sent again.
    Kept(Bytes),
    /// Streaming from the caller: it goes once.
    Streamed(reqwest::Body),
}

/// How a request body goes: why a streamed one stopped on the caller's side, and when it
/// last moved towards the platform (or ended), for the platform's part of the timeout.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    /// Milliseconds after `origin` of the last chunk the platform took, or of the end.
    last_ms: AtomicU64,
    /// The body is waiting on the caller (its silence is the caller's).
    on_caller: AtomicBool,
    too_large: AtomicBool,
    timed_out: AtomicBool,
    broke_off: AtomicBool,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            on_caller: AtomicBool::new(false),
            too_large: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            broke_off: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// The body moved (or ended) now.
    pub fn moved(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the platform's silence began: the last chunk it took, or the body's end;
    /// `None` while the body waits on the caller.
    pub fn platform_silent_since(&self) -> Option<Instant> {
        if self.on_caller.load(Ordering::Relaxed) {
            return None;
        }
        Some(self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }

    /// The caller's part in a failed send, if it had one.
    pub fn error(&self, limits: &ProxyLimits) -> Option<ProxyError> {
        if self.too_large.load(Ordering::Relaxed) {
            Some(ProxyError::RequestTooLarge {
                limit: limits.max_request_bytes,
            })
        } else if self.timed_out.load(Ordering::Relaxed) {
            Some(ProxyError::RequestBodyTimeout {
                after: limits.request_timeout,
            })
        } else if self.broke_off.load(Ordering::Relaxed) {
            Some(ProxyError::RequestBody(
                "the caller's connection broke off mid-body".into(),
            ))
        } else {
            None
        }
    }
}

/// The end of a streamed body: the caller's silence, its broken connection, or too much.
#[derive(Debug, thiserror::Error)]
enum BodyError {
    #[error("the caller sent nothing for the proxy's request timeout")]
    Timeout,
    #[error("the caller's body broke off: {0}")]
    Read(axum::Error),
    #[error("the body is longer than the proxy's limit")]
    TooLarge,
}

/// `body` (of `declared` length, if the caller said) as it goes to the platform: kept
/// whole when it ends within the retry limit, else streamed with what was read first.
/// `sent` counts its bytes; `progress` records how it goes.
pub async fn outgoing(
    body: axum::body::Body,
    declared: Option<u64>,
    limits: &ProxyLimits,
    sent: Counter,
    progress: Arc<Progress>,
) -> Result<Outgoing, ProxyError> {
    if declared.is_some_and(|n| n > limits.max_request_bytes) {
        return Err(ProxyError::RequestTooLarge {
            limit: limits.max_request_bytes,
        });
    }
    let mut stream = body.into_data_stream();
    let mut read = BytesMut::new();
    // A declared length past the retry limit streams from the first byte.
    if declared.is_none_or(|n| n <= limits.max_retry_body_bytes) {
        loop {
            let next = tokio::time::timeout(limits.request_timeout, stream.next()).await;
            match next {
                Err(_) => {
                    return Err(ProxyError::RequestBodyTimeout {
                        after: limits.request_timeout,
                    });
                }
                Ok(None) => {
                    sent.inc_by(read.len() as u64);
                    progress.moved();
                    return Ok(Outgoing::Kept(read.freeze()));
                }
                Ok(Some(Err(e))) => return Err(ProxyError::RequestBody(e.to_string())),
                Ok(Some(Ok(chunk))) => {
                    read.extend_from_slice(&chunk);
                    if read.len() as u64 > limits.max_request_bytes {
                        return Err(ProxyError::RequestTooLarge {
                            limit: limits.max_request_bytes,
                        });
                    }
                    if read.len() as u64 > limits.max_retry_body_bytes {
                        break;
                    }
                }
            }
        }
    }
    sent.inc_by(read.len() as u64);
    progress.moved();
    let rest = Upload {
        inner: stream,
        total: read.len() as u64,
        max: limits.max_request_bytes,
        timeout: limits.request_timeout,
        idle: Box::pin(tokio::time::sleep(limits.request_timeout)),
        progress,
        sent,
    };
    let first = futures::stream::iter((!read.is_empty()).then(|| Ok(read.freeze())));
    Ok(Outgoing::Streamed(reqwest::Body::wrap_stream(
        first.chain(rest),
    )))
}

/// The rest of a streamed request body, as the platform takes it: bounded in size, and
/// in the caller's silence (timed only while the platform waits for it).
struct Upload<S> {
    inner: S,
    total: u64,
    max: u64,
    timeout: Duration,
    /// Fires `timeout` after the last chunk the caller sent.
    idle: Pin<Box<Sleep>>,
    progress: Arc<Progress>,
    sent: Counter,
}

impl<S> Stream for Upload<S>
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Unpin,
{
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match this.inner.poll_next_unpin(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.progress.on_caller.store(false, Ordering::Relaxed);
                this.total += chunk.len() as u64;
                if this.total > this.max {
                    this.progress.too_large.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::TooLarge)));
                }
                this.sent.inc_by(chunk.len() as u64);
                this.progress.moved();
                this.idle.as_mut().reset(Instant::now() + this.timeout);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.progress.broke_off.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(BodyError::Read(e))))
            }
            Poll::Ready(None) => {
                this.progress.on_caller.store(false, Ordering::Relaxed);
                this.progress.moved();
                Poll::Ready(None)
            }
            Poll::Pending => {
                this.progress.on_caller.store(true, Ordering::Relaxed);
                if this.idle.as_mut().poll(cx).is_ready() {
                    this.progress.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
                Poll::Pending
            }
        }
    }
}

/// The largest answer read whole before it goes back (by its declared length): the usual
/// JSON answer, which a relay task would only slow.
pub const SMALL_ANSWER: u64 = 64 * 1024;

/// A small answer's body, read whole within `timeout`.
pub async fn whole(response: reqwest::Response, timeout: Duration) -> Result<Bytes, ProxyError> {
    match tokio::time::timeout(timeout, response.bytes()).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => Err(ProxyError::Upstream(crate::upstream::error_reason(e))),
        Err(_) => Err(ProxyError::UpstreamTimeout { after: timeout }),
    }
}

/// The platform's answer body as it goes back to the caller, relayed by a task of its own
/// that holds `permit` (the request's place) until it ends: counted into `received`, cut
/// off past `max` bytes, and ended when either side is silent for `timeout` (the
/// platform sends nothing, or the caller reads nothing), so that a caller that stops
/// reading frees the place.
pub fn incoming(
    response: reqwest::Response,
    max: u64,
    timeout: Duration,
    received: Counter,
    permit: OwnedSemaphorePermit,
) -> axum::body::Body {
    let (tx, rx) = mpsc::channel::<Result<Bytes, AnswerCut>>(1);
    // Set once the whole answer is relayed: a relay that ends without it ends the caller's
    // body with an error, never as if complete.
    let whole = Arc::new(AtomicBool::new(false));
    let relayed = Arc::clone(&whole);
    tokio::spawn(async move {
        let _place = permit;
        let mut stream = response.bytes_stream();
        let mut total = 0u64;
        loop {
            let item = match tokio::time::timeout(timeout, stream.next()).await {
                Ok(None) => {
                    relayed.store(true, Ordering::Relaxed);
                    return;
                }
                Ok(Some(Ok(chunk))) => {
                    total += chunk.len() as u64;
                    if total > max {
                        Err(AnswerCut::TooLong)
                    } else {
                        Ok(chunk)
                    }
                }
                Ok(Some(Err(_))) => Err(AnswerCut::Broken),
                Err(_) => Err(AnswerCut::PlatformSilent),
            };
            let cut = item.as_ref().err().copied();
            let len = item.as_ref().map_or(0, |c| c.len() as u64);
            match tx.send_timeout(item, timeout).await {
                Ok(()) => {
                    received.inc_by(len);
                }
                Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                    tracing::debug!(
                        "proxy: the caller read nothing of the answer for proxy.request_timeout; closed"
                    );
                    return;
                }
                // The caller went away.
                Err(mpsc::error::SendTimeoutError::Closed(_)) => return,
            }
            if let Some(cut) = cut {
                tracing::warn!(reason = %cut, "proxy: the platform's answer was cut off");
                return;
            }
        }
    });
    let end = futures::stream::once(async move {
        (!whole.load(Ordering::Relaxed)).then_some(Err(AnswerCut::Stalled))
    })
    .filter_map(std::future::ready);
    axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx).chain(end))
}

/// Why an answer body was cut off: the caller sees its connection end mid-answer.
#[derive(Debug, Clone, Copy, thiserror::Error)]
enum AnswerCut {
    #[error("longer than proxy.max_response_bytes")]
    TooLong,
    #[error("the platform's connection broke")]
    Broken,
    #[error("the platform sent nothing for proxy.request_timeout")]
    PlatformSilent,
    #[error("the caller read nothing for proxy.request_timeout")]
    Stalled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ProxyLimits {
        ProxyLimits {
            max_request_bytes: 10,
            request_timeout: Duration::from_secs(5),
            ..ProxyLimits::default()
        }
    }

    type Fed = Pin<Box<dyn Stream<Item = Result<Bytes, axum::Error>> + Send>>;

    /// The rest of a body fed from `chunks`, as [`outgoing`] streams it.
    fn upload(
        chunks: Vec<Result<Bytes, axum::Error>>,
        pending_after: bool,
        progress: &Arc<Progress>,
    ) -> Upload<Fed> {
        let fed = futures::stream::iter(chunks);
        let inner: Fed = if pending_after {
            Box::pin(fed.chain(futures::stream::pending()))
        } else {
            Box::pin(fed)
        };
        let l = limits();
        Upload {
            inner,
            total: 0,
            max: l.max_request_bytes,
            timeout: l.request_timeout,
            idle: Box::pin(tokio::time::sleep(l.request_timeout)),
            progress: Arc::clone(progress),
            sent: Counter::default(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_breaks_off_is_the_callers_400_and_too_much_is_413() {
        let progress = Arc::new(Progress::default());
        let broken = std::io::Error::other("reset");
        let mut body = upload(
            vec![
                Ok(Bytes::from_static(b"abc")),
                Err(axum::Error::new(broken)),
            ],
            false,
            &progress,
        );
        assert!(body.next().await.unwrap().is_ok());
        assert!(progress.error(&limits()).is_none(), "nothing wrong yet");
        assert!(body.next().await.unwrap().is_err());
        assert!(matches!(
            progress.error(&limits()),
            Some(ProxyError::RequestBody(_))
        ));

        let progress = Arc::new(Progress::default());
        let mut body = upload(vec![Ok(Bytes::from(vec![0u8; 11]))], false, &progress);
        assert!(body.next().await.unwrap().is_err());
        assert!(matches!(
            progress.error(&limits()),
            Some(ProxyError::RequestTooLarge { limit: 10 })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn the_callers_silence_is_timed_and_the_platforms_runs_from_the_last_chunk() {
        let progress = Arc::new(Progress::default());
        let mut body = upload(vec![Ok(Bytes::from_static(b"ab"))], true, &progress);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(body.next().await.unwrap().is_ok());
        let taken = progress
            .platform_silent_since()
            .expect("the platform has it");
        assert_eq!(
            taken,
            Instant::now(),
            "the platform's clock starts at the chunk"
        );
        // The caller sends nothing more: while the body waits on it, the silence is the
        // caller's, and at the timeout the body ends as a 408.
        let started = Instant::now();
        assert!(body.next().await.unwrap().is_err());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert!(matches!(
            progress.error(&limits()),
            Some(ProxyError::RequestBodyTimeout { .. })
        ));
        assert_eq!(
            progress.platform_silent_since(),
            None,
            "waiting on the caller"
        );
    }
}
