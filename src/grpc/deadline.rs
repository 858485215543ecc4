//! The caller's deadline (`grpc-timeout`): a call that cannot get a token in time answers
//! UNAVAILABLE just before the deadline, instead of tonic cancelling it at the deadline.
//! The flight it waited on goes on, and fills the cache for the next call.

use std::{future::Future, sync::LazyLock, time::Duration};

use tonic::{
    Status,
    metadata::{AsciiMetadataKey, MetadataMap},
};

/// The most taken off a deadline to answer in time.
const ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// Parses `grpc-timeout` (gRPC over HTTP/2: up to 8 digits and a unit, H M S m u n).
pub fn parse(value: &str) -> Option<Duration> {
    // Bytes, not chars: a string cut before its last byte may not be cut on a char.
    let (unit, digits) = value.as_bytes().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The header's name, parsed once: a lookup by `&str` parses the name on every call.
static GRPC_TIMEOUT: LazyLock<AsciiMetadataKey> =
    LazyLock::new(|| AsciiMetadataKey::from_static("grpc-timeout"));

/// The caller's deadline, if it sent one.
pub fn of(metadata: &MetadataMap) -> Option<Duration> {
    parse(metadata.get(&*GRPC_TIMEOUT)?.to_str().ok()?)
}

/// Runs `call`, answering UNAVAILABLE shortly before `deadline` if it has not finished.
/// `budget` says whether upstream requests wait for the budget then (the message names
/// it).
pub async fn within<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
    budget: impl FnOnce() -> bool,
) -> Result<T, Status> {
    within_or(deadline, call, || None, budget).await
}

/// [`within`], but when the deadline comes first, `fallback`'s answer if it has one (the
/// still valid token a caller waiting on its renewal may have).
pub async fn within_or<T>(
    deadline: Option<Duration>,
    call: impl Future<Output = Result<T, Status>>,
    fallback: impl FnOnce() -> Option<T>,
    budget: impl FnOnce() -> bool,
) -> Result<T, Status> {
    let Some(deadline) = deadline else {
        return call.await;
    };
    let margin = deadline.saturating_sub((deadline / 10).min(ANSWER_MARGIN));
    match tokio::time::timeout(margin, call).await {
        Ok(answer) => answer,
        Err(_) => fallback().ok_or_else(|| {
            let why = if budget() {
                "its request waits for the upstream budget (upstream.max_requests_per_second), which keeps the platform from throttling; the request goes on"
            } else {
                "the platform is slow or unreachable; the broker keeps trying"
            };
            Status::unavailable(format!(
                "no token within the call's deadline ({} ms): {why}, so retry shortly",
                deadline.as_millis()
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse("1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        for bad in ["", "S", "1", "1x", "123456789S", "-1S", "1.5S", "+1S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    /// Found by the fuzz target (`fuzz/`): its crash input was `0Ð`, a digit and a two-byte
    /// char, and `split_at` off a char boundary panicked. Headers are ASCII; the parser no
    /// longer relies on it.
    #[test]
    fn a_multibyte_last_char_is_refused_not_a_panic() {
        for bad in ["0Ð", "1é", "é", "12€", "\u{10FFFF}"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn answers_unavailable_before_the_deadline() {
        let start = tokio::time::Instant::now();
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Status>(())
        };
        let status = within(Some(Duration::from_secs(1)), slow, || false)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(start.elapsed(), Duration::from_millis(950));
        assert!(
            within(None, async { Ok::<_, Status>(7) }, || false)
                .await
                .is_ok()
        );
        // A request waiting for the upstream budget is named as the reason.
        let waiting = within(
            Some(Duration::from_secs(1)),
            std::future::pending::<Result<(), Status>>(),
            || true,
        )
        .await
        .unwrap_err();
        assert!(
            waiting
                .message()
                .contains("upstream.max_requests_per_second"),
            "{}",
            waiting.message()
        );
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<_, Status>(1)
        };
        let held = within_or(Some(Duration::from_secs(1)), slow, || Some(2), || false).await;
        assert_eq!(held.ok(), Some(2), "the fallback answers at the deadline");
    }
}
