//! The bodies through the proxy, streamed both ways. A request body up to
//! `proxy.max_retry_body_bytes` is kept whole, so that it can be sent again after a 401;
//! beyond that only what was read while deciding is held, and the rest streams. Both
//! directions are bounded in size, and a caller's body in silence too (the platform's
//! silence is the HTTP client's read timeout).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::OwnedSemaphorePermit;

use super::{ProxyLimits, reply::ProxyError};

/// A request body ready to go to the platform.
pub enum Outgoing {
    /// Read whole: it may be sent again.
    Kept(Bytes),
    /// Streaming from the caller: it goes once.
    Streamed(reqwest::Body),
}

/// Why a streamed request body stopped on the caller's side, for the answer to the
/// caller when the platform's request then fails.
#[derive(Debug, Default)]
pub struct Stopped {
    too_large: AtomicBool,
    timed_out: AtomicBool,
}

impl Stopped {
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
/// `sent` counts its bytes; `stopped` records why a streamed body ended early.
pub async fn outgoing(
    body: axum::body::Body,
    declared: Option<u64>,
    limits: &ProxyLimits,
    sent: Counter,
    stopped: Arc<Stopped>,
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
    let mut total = read.len() as u64;
    sent.inc_by(total);
    let (max, timeout) = (limits.max_request_bytes, limits.request_timeout);
    let rest = tokio_stream::StreamExt::timeout(stream, timeout).map(move |item| {
        let chunk = match item {
            Err(_) => {
                stopped.timed_out.store(true, Ordering::Relaxed);
                return Err(BodyError::Timeout);
            }
            Ok(Err(e)) => return Err(BodyError::Read(e)),
            Ok(Ok(chunk)) => chunk,
        };
        total += chunk.len() as u64;
        if total > max {
            stopped.too_large.store(true, Ordering::Relaxed);
            return Err(BodyError::TooLarge);
        }
        sent.inc_by(chunk.len() as u64);
        Ok(chunk)
    });
    let first = futures::stream::iter((!read.is_empty()).then(|| Ok(read.freeze())));
    Ok(Outgoing::Streamed(reqwest::Body::wrap_stream(
        first.chain(rest),
    )))
}

/// The platform's answer body as it goes back to the caller: counted into `received`, cut
/// off past `max` bytes, holding `permit` (the request's place) until it ends.
pub fn incoming(
    response: reqwest::Response,
    max: u64,
    received: Counter,
    permit: OwnedSemaphorePermit,
) -> axum::body::Body {
    let mut total = 0u64;
    let stream = response.bytes_stream().map(move |item| {
        let _place = &permit;
        let chunk = item?;
        total += chunk.len() as u64;
        if total > max {
            tracing::warn!(
                limit = max,
                "the platform's answer was cut off at proxy.max_response_bytes"
            );
            return Err(AnswerTooLong.into());
        }
        received.inc_by(chunk.len() as u64);
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(chunk)
    });
    axum::body::Body::from_stream(stream)
}

/// An answer body that ran past `proxy.max_response_bytes`.
#[derive(Debug, thiserror::Error)]
#[error("the platform's answer is longer than proxy.max_response_bytes")]
struct AnswerTooLong;
