// The numbers of the clients' shared contract (clients/README.md) as pure functions, so the
// source's timing rules can be tested without a broker or a clock: reconnect backoff and
// when a token counts as expired.
'use strict';

/** The first reconnect wait's ceiling, in milliseconds. */
const BACKOFF_INITIAL_MS = 100;
/** The ceiling stops doubling here, in milliseconds. */
const BACKOFF_MAX_MS = 30_000;
/** A token counts as expired this long before its `expires_at`, in milliseconds. */
const EXPIRY_MARGIN_MS = 5_000;

/**
 * What a token the source asks for itself must have left (`min_valid_for`): more than the
 * expiry margin, so the broker renews one that has less rather than hand over a token the
 * source could not use.
 */
const FETCH_MIN_VALID_MS = 6_000;
/** How long `token()` waits by default, in milliseconds. */
const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * The ceiling of the wait before reconnect attempt `attempt` (0 for the first after a
 * stream delivered): 100 ms doubling to 30 s.
 * @param {number} attempt
 * @returns {number} milliseconds
 */
function backoffCeiling(attempt) {
  // 2 ** 9 * 100 already passes 30 s: clamp the exponent so huge attempts stay finite.
  return Math.min(BACKOFF_INITIAL_MS * 2 ** Math.min(attempt, 16), BACKOFF_MAX_MS);
}

/**
 * The jittered wait before reconnect attempt `attempt`: drawn between half and all of its
 * ceiling.
 * @param {number} attempt
 * @param {() => number} [random] uniform in [0, 1), Math.random by default
 * @returns {number} milliseconds
 */
function backoffDelay(attempt, random = Math.random) {
  const ceiling = backoffCeiling(attempt);
  return ceiling / 2 + (ceiling / 2) * random();
}

/**
 * Whether a token that the platform stops accepting at `expiresAtMs` counts as expired at
 * `nowMs`: from 5 s before its expiry on. A token with no expiry (null) never does.
 * @param {number | null} expiresAtMs
 * @param {number} nowMs
 * @returns {boolean}
 */
function isExpired(expiresAtMs, nowMs) {
  return expiresAtMs !== null && nowMs >= expiresAtMs - EXPIRY_MARGIN_MS;
}

/**
 * A protobuf Timestamp as decoded by proto-loader (seconds as a decimal string) in
 * milliseconds since the epoch; null when unset.
 * @param {{ seconds: string | number, nanos: number } | null | undefined} timestamp
 * @returns {number | null}
 */
function timestampMs(timestamp) {
  if (!timestamp) return null;
  return Number(timestamp.seconds) * 1000 + Math.floor((timestamp.nanos || 0) / 1e6);
}

/**
 * A duration in milliseconds as a protobuf Duration message.
 * @param {number} ms
 * @returns {{ seconds: number, nanos: number }}
 */
function durationOf(ms) {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

module.exports = {
  BACKOFF_INITIAL_MS,
  BACKOFF_MAX_MS,
  EXPIRY_MARGIN_MS,
  FETCH_MIN_VALID_MS,
  DEFAULT_TIMEOUT_MS,
  backoffCeiling,
  backoffDelay,
  isExpired,
  timestampMs,
  durationOf,
};
