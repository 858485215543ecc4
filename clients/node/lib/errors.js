// TokenError: the one error a source raises, carrying the broker's status name (or a
// WatchTokens event's reason) and message, so callers can branch on `.code` without
// knowing gRPC's numeric codes.
'use strict';
const { status: Status } = require('@grpc/grpc-js');

/** gRPC's numeric status codes by their names' inverse: 5 -> 'NOT_FOUND'. */
const STATUS_NAMES = Object.fromEntries(
  Object.entries(Status)
    .filter(([, value]) => typeof value === 'number')
    .map(([name, value]) => [value, name]),
);

/**
 * Why no token could be had. `code` is a gRPC status name such as 'NOT_FOUND',
 * 'UNAVAILABLE' or 'UNAUTHENTICATED', or the reason of the WatchTokens event that emptied
 * the source: 'REVOKED' or 'UNAVAILABLE'. `message` is the broker's message (or the
 * event's detail).
 */
class TokenError extends Error {
  /**
   * @param {string} code
   * @param {string} message
   */
  constructor(code, message) {
    super(message);
    this.name = 'TokenError';
    /** @type {string} */
    this.code = code;
  }

  /**
   * The TokenError for a failed gRPC call or stream (a grpc-js ServiceError or a
   * StatusObject).
   * @param {{ code: number, details?: string, message?: string }} failure
   * @returns {TokenError}
   */
  static fromStatus(failure) {
    const code = STATUS_NAMES[failure.code] ?? 'UNKNOWN';
    const message = failure.details || failure.message || `the broker answered ${code}`;
    return new TokenError(code, message);
  }
}

module.exports = { TokenError };
