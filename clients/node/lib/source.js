// TokenSource: the current token of one key (an org, or one user of it), kept by one
// WatchTokens stream that reconnects by itself, with the rules of clients/README.md for
// when token() may answer from what it holds and when it must ask the broker.
'use strict';
const { EventEmitter } = require('node:events');
const { inspect } = require('node:util');
const { Connection, unary, watch } = require('./connection');
const { TokenError } = require('./errors');
const { TokenInfo } = require('./token');
const { DEFAULT_TIMEOUT_MS, FETCH_MIN_VALID_MS, backoffDelay, durationOf } = require('./policy');

/** 'TOKEN_EVENT_REASON_FORCED' -> 'FORCED'. */
const reasonName = (reason) => String(reason).replace(/^TOKEN_EVENT_REASON_/, '');

/** `timeoutMs` if it is a finite, non-negative number of milliseconds. */
function checkTimeout(timeoutMs) {
  if (typeof timeoutMs !== 'number' || !Number.isFinite(timeoutMs) || timeoutMs < 0) {
    throw new TypeError('timeoutMs must be a finite number of milliseconds, 0 or more');
  }
  return timeoutMs;
}

/** The events that leave a key without a token: the source is emptied until the next. */
const EMPTYING = new Set(['REVOKED', 'UNAVAILABLE']);

/**
 * The current access token of one key, followed on a WatchTokens stream.
 *
 * Emits 'token' (info: TokenInfo, reason: string) whenever it takes a newer token: the
 * stream's reason ('INITIAL', 'ISSUED', 'RENEWED', 'FORCED', 'REISSUED'), or 'FETCHED' /
 * 'REFRESHED' for tokens from its own GetOrgToken/GetUserToken and Refresh calls.
 */
class TokenSource extends EventEmitter {
  #conn;
  #ownsConn;
  #org;
  #userId;
  /** @type {TokenInfo | null} the newest token received */
  #held = null;
  /** @type {TokenError | null} set by a REVOKED or UNAVAILABLE event, until the next token */
  #emptied = null;
  /** @type {TokenError | null} why the stream is down; null while it delivers, or before
   * its first failure */
  #streamError = null;
  #call = null;
  #timer = null;
  #attempt = 0;
  #closed = false;
  /** @type {{ deadline: number, promise: Promise<string> } | null} the Get*Token in flight */
  #asking = null;
  /** @type {Set<() => void>} token() calls waiting for the stream */
  #waiters = new Set();

  /**
   * @param {string | Connection} connOrTarget a Connection to share (the source does not
   *   close it), or a target ('host:port', 'unix:///path') for a connection of its own
   * @param {object} [options]
   * @param {string} [options.org] the org as configured at the broker; may be empty when
   *   it has exactly one
   * @param {string} [options.userId] a person id or ExternalSourceID; none follows the
   *   org token
   * @param {string} [options.apiKey] with a target: see Connection
   * @param {Buffer} [options.rootCerts] with a target: see Connection
   * @param {Buffer} [options.certChain] with a target: see Connection
   * @param {Buffer} [options.privateKey] with a target: see Connection
   * @param {object} [options.channelOptions] with a target: see Connection
   */
  constructor(connOrTarget, options = {}) {
    super();
    const { org = '', userId = '', ...connectionOptions } = options;
    if (typeof org !== 'string' || typeof userId !== 'string') {
      throw new TypeError('org and userId must be strings');
    }
    if (connOrTarget instanceof Connection) {
      const given = Object.entries(connectionOptions).filter(([, v]) => v !== undefined);
      if (given.length > 0) {
        throw new TypeError(
          `${given.map(([k]) => k).join(', ')}: credentials belong to the Connection`,
        );
      }
      this.#conn = connOrTarget;
      this.#ownsConn = false;
    } else {
      this.#conn = new Connection(connOrTarget, connectionOptions);
      this.#ownsConn = true;
    }
    this.#org = org;
    this.#userId = userId;
    this.#watch();
  }

  /** The org this source follows ('' for the broker's only org). */
  get org() {
    return this.#org;
  }

  /** The user this source follows; '' for the org token. */
  get userId() {
    return this.#userId;
  }

  /**
   * The current access token. Answers at once from the token held while it is valid (more
   * than 5 s before its expiry). With none yet, waits for the stream's first, up to
   * `timeoutMs`; when the stream has failed, or the held token has expired, asks the
   * broker itself (GetOrgToken/GetUserToken) within what is left of the timeout.
   * @param {{ timeoutMs?: number }} [options] default 10000
   * @returns {Promise<string>}
   * @throws {TokenError} the broker's status when no token can be had, 'REVOKED' or
   *   'UNAVAILABLE' (with the event's detail) after such an event, 'DEADLINE_EXCEEDED' at
   *   the timeout, 'CANCELLED' once closed
   */
  async token({ timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + checkTimeout(timeoutMs);
    for (;;) {
      this.#checkOpen();
      if (this.#emptied) throw this.#emptied;
      const held = this.#held;
      if (held && !held.isExpired()) return held.accessToken;
      if (held || this.#streamError) return this.#ask(deadline);
      // No token yet and the stream has not failed: it is still opening.
      if (Date.now() >= deadline) {
        // What would be left for a call of our own is nothing.
        throw new TokenError('DEADLINE_EXCEEDED', `no token from the broker within ${timeoutMs} ms`);
      }
      await this.#changeOrDeadline(deadline);
    }
  }

  /**
   * Forces a rotation after the platform rejected `stale`: calls Refresh with it as
   * `stale_access_token`, so many callers that saw the same token rejected cost one
   * rotation (the broker answers its newer token when it already has one). Without `stale`,
   * the broker rotates unconditionally. The new token is held and returned.
   * @param {string} [stale] the access token the platform rejected
   * @param {{ timeoutMs?: number }} [options] default 10000
   * @returns {Promise<string>}
   * @throws {TokenError}
   */
  async refresh(stale, { timeoutMs = DEFAULT_TIMEOUT_MS } = {}) {
    this.#checkOpen();
    const answer = await this.#conn[unary](
      'Refresh',
      { org: this.#org, userId: this.#userId, staleAccessToken: stale ?? '' },
      Date.now() + checkTimeout(timeoutMs),
    );
    this.#checkOpen();
    return this.#offer(TokenInfo.fromMessage(answer.token), 'REFRESHED').accessToken;
  }

  /**
   * Ends the stream, and the connection when the source made its own. Pending and later
   * token() and refresh() calls reject with code 'CANCELLED'. Closing twice does nothing.
   */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = null;
    const call = this.#call;
    this.#call = null;
    call?.cancel();
    if (this.#ownsConn) this.#conn.close();
    this.#held = null;
    this.#notify();
  }

  #checkOpen() {
    if (this.#closed) throw new TokenError('CANCELLED', 'the token source is closed');
    if (this.#conn.closed) throw new TokenError('CANCELLED', 'the connection is closed');
  }

  /** Opens the stream; every end of it schedules the next, until close(). */
  #watch() {
    this.#timer = null;
    if (this.#closed) return;
    let call;
    try {
      call = this.#conn[watch]({ org: this.#org, userIds: this.#userId ? [this.#userId] : [] });
    } catch (error) {
      // A shared connection closed under the source: nothing to reconnect to.
      this.#streamError = error instanceof TokenError ? error : TokenError.fromStatus(error);
      this.#notify();
      return;
    }
    this.#call = call;
    let delivered = false;
    call.on('data', (message) => {
      if (this.#closed) return; // a message already on its way when close() came
      if (!delivered) {
        delivered = true;
        this.#attempt = 0;
        this.#streamError = null;
      }
      this.#onMessage(message);
    });
    call.on('error', () => {}); // 'status' follows with the same news.
    call.on('status', (status) => {
      if (this.#call !== call) return; // cancelled by close()
      this.#call = null;
      this.#streamDown(status);
    });
  }

  /** The stream ended: record why, wake waiting token() calls, reconnect after a backoff. */
  #streamDown(status) {
    this.#streamError =
      status.code === 0
        ? new TokenError('UNAVAILABLE', 'the broker ended the watch stream')
        : TokenError.fromStatus(status);
    this.#notify();
    this.#timer = setTimeout(() => this.#watch(), backoffDelay(this.#attempt++));
    // A source waiting to reconnect does not keep the process alive by itself.
    this.#timer.unref();
  }

  #onMessage(message) {
    const reason = reasonName(message.reason);
    if (message.token) {
      this.#offer(TokenInfo.fromMessage(message.token), reason);
    } else if (EMPTYING.has(reason)) {
      this.#held = null;
      this.#emptied = new TokenError(reason, message.detail || `the broker sent ${reason}`);
      this.#notify();
    }
  }

  /**
   * Takes `token` when it is newer than the one held (a stream's INITIAL always is: it is
   * the broker's current state), and returns the one held after.
   * @param {TokenInfo} token
   * @param {string} reason
   * @returns {TokenInfo}
   */
  #offer(token, reason) {
    const held = this.#held;
    const newer =
      reason === 'INITIAL' || !held || held.isExpired() || token.generation > held.generation;
    if (!newer) return held;
    this.#held = token;
    this.#emptied = null;
    this.#notify();
    this.emit('token', token, reason);
    return token;
  }

  /**
   * GetOrgToken/GetUserToken, valid at least FETCH_MIN_VALID_MS (past the expiry margin). Joins a call already
   * in flight when that one ends no later than `deadline`.
   * @param {number} deadline
   * @returns {Promise<string>}
   */
  #ask(deadline) {
    if (this.#asking && this.#asking.deadline <= deadline) return this.#asking.promise;
    const minValidFor = durationOf(FETCH_MIN_VALID_MS);
    const [method, request] = this.#userId
      ? ['GetUserToken', { org: this.#org, userId: this.#userId, minValidFor }]
      : ['GetOrgToken', { org: this.#org, minValidFor }];
    const promise = this.#conn[unary](method, request, deadline)
      .then((answer) => {
        this.#checkOpen();
        return this.#offer(TokenInfo.fromMessage(answer.token), 'FETCHED').accessToken;
      })
      .finally(() => {
        if (this.#asking?.promise === promise) this.#asking = null;
      });
    this.#asking = { deadline, promise };
    return promise;
  }

  /** Wakes every token() call waiting for a change. */
  #notify() {
    const waiters = [...this.#waiters];
    this.#waiters.clear();
    for (const wake of waiters) wake();
  }

  /** Resolves at the next change of state, or at `deadline`. */
  #changeOrDeadline(deadline) {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, Math.max(0, deadline - Date.now()));
      this.#waiters.add(wake);
    });
  }

  [inspect.custom]() {
    const user = this.#userId ? `, userId: ${inspect(this.#userId)}` : '';
    const state = this.#closed ? 'closed' : this.#held ? `generation ${this.#held.generation}` : 'no token';
    return `TokenSource { org: ${inspect(this.#org)}${user}, ${state} }`;
  }
}

module.exports = { TokenSource };
