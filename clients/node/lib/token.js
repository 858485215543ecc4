// TokenInfo: a token as the broker described it, in JavaScript terms (Dates, numbers,
// camelCase), that never prints its secret: util.inspect and JSON show only the first
// 8 characters of the access token.
'use strict';
const { inspect } = require('node:util');
const { isExpired, timestampMs } = require('./policy');

/** How many leading characters of an access token may appear in logs. */
const SHOWN_CHARS = 8;

/** One access token and what the broker said about it. */
class TokenInfo {
  /**
   * @param {object} fields
   * @param {string} fields.accessToken the opaque token: send it as `Bearer <accessToken>`
   * @param {string} fields.tokenType normally 'Bearer'
   * @param {Date | null} fields.expiresAt when the platform stops accepting it; null for
   *   a long-lived token
   * @param {Date | null} fields.issuedAt when the broker asked the platform for it
   * @param {string} fields.org
   * @param {string} fields.userId empty for an org token
   * @param {number} fields.generation grows by one with every new token of the key
   * @param {string} fields.scope
   */
  constructor({ accessToken, tokenType, expiresAt, issuedAt, org, userId, generation, scope }) {
    this.accessToken = accessToken;
    this.tokenType = tokenType;
    this.expiresAt = expiresAt;
    this.issuedAt = issuedAt;
    this.org = org;
    this.userId = userId;
    this.generation = generation;
    this.scope = scope;
    Object.freeze(this);
  }

  /**
   * The TokenInfo of a decoded `tokenbroker.v1.Token` message.
   * @param {any} message
   * @returns {TokenInfo}
   */
  static fromMessage(message) {
    const expires = timestampMs(message.expiresAt);
    const issued = timestampMs(message.issuedAt);
    return new TokenInfo({
      accessToken: message.accessToken,
      tokenType: message.tokenType,
      expiresAt: expires === null ? null : new Date(expires),
      issuedAt: issued === null ? null : new Date(issued),
      org: message.org,
      userId: message.userId,
      generation: Number(message.generation),
      scope: message.scope,
    });
  }

  /**
   * Whether the token counts as expired at `now`: from 5 s before `expiresAt` on.
   * @param {number} [now] milliseconds since the epoch
   * @returns {boolean}
   */
  isExpired(now = Date.now()) {
    return isExpired(this.expiresAt === null ? null : this.expiresAt.getTime(), now);
  }

  /** What logs may show: the token's first characters only. */
  toJSON() {
    return { ...this, accessToken: `${this.accessToken.slice(0, SHOWN_CHARS)}...` };
  }

  [inspect.custom](_depth, options, inspectFn = inspect) {
    return `TokenInfo ${inspectFn(this.toJSON(), options)}`;
  }
}

module.exports = { TokenInfo };
