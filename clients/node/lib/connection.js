// Connection: one grpc-js channel to a broker, with its credentials (TLS, client
// certificate, API key). Token sources made from one Connection share its channel, and so
// one HTTP/2 connection; the calls the sources make go through the symbols below, which
// are not public API.
'use strict';
const grpc = require('@grpc/grpc-js');
const { inspect } = require('node:util');
const { TokenServiceClient } = require('./descriptor');
const { TokenError } = require('./errors');
const { BACKOFF_INITIAL_MS, BACKOFF_MAX_MS } = require('./policy');

/** Internal: `conn[unary](method, request, deadline)` -> Promise of the answer. */
const unary = Symbol('tokenbroker.unary');
/** Internal: `conn[watch](request)` -> grpc-js ClientReadableStream. */
const watch = Symbol('tokenbroker.watch');

/**
 * The channel reconnects on the contract's schedule too (grpc-js' own default waits up to
 * 120 s), so a source's reconnect is not held up by a channel still backing off.
 */
const CHANNEL_DEFAULTS = Object.freeze({
  'grpc.initial_reconnect_backoff_ms': BACKOFF_INITIAL_MS,
  'grpc.max_reconnect_backoff_ms': BACKOFF_MAX_MS,
});

/** What an API key may hold: it goes in a header. */
const HEADER_SAFE = /^[\x21-\x7e]+$/;

/** One channel to a tokenbroker, shared by the token sources made from it. */
class Connection {
  #target;
  #client;
  #apiKey;
  #tls;
  #closed = false;

  /**
   * @param {string} target 'host:port', or 'unix:///path/to.sock'
   * @param {object} [options]
   * @param {string} [options.apiKey] sent as `authorization: Bearer <apiKey>` on every call
   * @param {Buffer} [options.rootCerts] PEM of the CA to trust the broker with; turns on TLS
   * @param {Buffer} [options.certChain] PEM of a client certificate, for mutual TLS
   * @param {Buffer} [options.privateKey] PEM of that certificate's key
   * @param {object} [options.channelOptions] grpc-js channel options, over the defaults
   */
  constructor(target, { apiKey, rootCerts, certChain, privateKey, channelOptions } = {}) {
    if (typeof target !== 'string' || target === '') {
      throw new TypeError("target must be 'host:port' or 'unix:///path'");
    }
    if (apiKey !== undefined && (typeof apiKey !== 'string' || !HEADER_SAFE.test(apiKey))) {
      throw new TypeError('apiKey must be a non-empty string of printable ASCII without spaces');
    }
    if ((certChain === undefined) !== (privateKey === undefined)) {
      throw new TypeError('certChain and privateKey go together');
    }
    this.#tls = rootCerts !== undefined || certChain !== undefined;
    const credentials = this.#tls
      ? grpc.credentials.createSsl(rootCerts ?? null, privateKey ?? null, certChain ?? null)
      : grpc.credentials.createInsecure();
    this.#target = target;
    this.#apiKey = apiKey;
    this.#client = new TokenServiceClient(target, credentials, {
      ...CHANNEL_DEFAULTS,
      ...channelOptions,
    });
  }

  /** The target this connection was made for. */
  get target() {
    return this.#target;
  }

  /** Whether close() was called. */
  get closed() {
    return this.#closed;
  }

  /**
   * Closes the channel. Sources made from this connection fail from then on; close them
   * first. Closing twice does nothing.
   */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    this.#client.close();
  }

  /** The metadata every call carries: the API key, when there is one. */
  #metadata() {
    const metadata = new grpc.Metadata();
    if (this.#apiKey !== undefined) metadata.set('authorization', `Bearer ${this.#apiKey}`);
    return metadata;
  }

  /** @returns {TokenError} */
  #closedError() {
    return new TokenError('CANCELLED', 'the connection is closed');
  }

  /**
   * A unary call of TokenService: its answer, or a TokenError.
   * @param {'GetOrgToken' | 'GetUserToken' | 'Refresh'} method
   * @param {object} request
   * @param {number} deadline milliseconds since the epoch
   * @returns {Promise<any>}
   */
  [unary](method, request, deadline) {
    if (this.#closed) return Promise.reject(this.#closedError());
    return new Promise((resolve, reject) => {
      this.#client[method](request, this.#metadata(), { deadline }, (error, answer) =>
        error ? reject(TokenError.fromStatus(error)) : resolve(answer),
      );
    });
  }

  /**
   * Opens a WatchTokens stream; throws a TokenError when the connection is closed.
   * @param {object} request
   */
  [watch](request) {
    if (this.#closed) throw this.#closedError();
    return this.#client.WatchTokens(request, this.#metadata());
  }

  [inspect.custom]() {
    const key = this.#apiKey === undefined ? '' : ', apiKey: [set]';
    return `Connection { target: ${inspect(this.#target)}, tls: ${this.#tls}${key}${this.#closed ? ', closed' : ''} }`;
  }
}

module.exports = { Connection, unary, watch };
