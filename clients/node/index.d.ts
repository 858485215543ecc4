// Type declarations of tokenbroker (hand-written: the package is plain JavaScript).
// index.d.mts re-exports them for ESM importers.
/// <reference types="node" />

import { EventEmitter } from 'node:events';

/** Credentials and channel settings of a Connection. */
export interface ConnectionOptions {
  /** Sent as `authorization: Bearer <apiKey>` on every call. */
  apiKey?: string;
  /** PEM of the CA to trust the broker with; turns on TLS. */
  rootCerts?: Buffer;
  /** PEM of a client certificate, for mutual TLS (with privateKey); turns on TLS. */
  certChain?: Buffer;
  /** PEM of the client certificate's private key. */
  privateKey?: Buffer;
  /** grpc-js channel options, applied over the package's defaults. */
  channelOptions?: Record<string, string | number>;
}

/**
 * One grpc-js channel to a broker (one HTTP/2 connection), shared by the token sources
 * made from it. Targets: 'host:port' or 'unix:///path/to.sock'.
 */
export declare class Connection {
  constructor(target: string, options?: ConnectionOptions);
  /** The target this connection was made for. */
  readonly target: string;
  /** Whether close() was called. */
  readonly closed: boolean;
  /** Closes the channel; sources made from it fail from then on. Idempotent. */
  close(): void;
}

/** Which token a source follows: the org's, or one user's. */
export interface TokenKey {
  /** The org as configured at the broker; may be omitted when it has exactly one. */
  org?: string;
  /** A person id or ExternalSourceID; omitted, the source follows the org token. */
  userId?: string;
}

/** Options of a source that makes its own Connection to a target. */
export interface TokenSourceOptions extends TokenKey, ConnectionOptions {}

/** Options of token() and refresh(). */
export interface CallOptions {
  /** How long to wait for a token, in milliseconds; default 10000. */
  timeoutMs?: number;
}

/** A token as the broker described it. Logs and JSON show only its first 8 characters. */
export interface TokenInfo {
  /** The opaque token: send it as `Authorization: Bearer <accessToken>`. */
  readonly accessToken: string;
  /** The token type the platform named, normally 'Bearer'. */
  readonly tokenType: string;
  /** When the platform stops accepting it; null for a long-lived token. */
  readonly expiresAt: Date | null;
  /** When the broker asked the platform for it. */
  readonly issuedAt: Date | null;
  readonly org: string;
  /** Empty for an org token. */
  readonly userId: string;
  /** Starts at 1 per key and grows by one with every new token. */
  readonly generation: number;
  /** The scope granted, space-separated; empty when the platform did not say. */
  readonly scope: string;
  /** Whether it counts as expired at `now` (ms since the epoch): from 5 s before expiresAt. */
  isExpired(now?: number): boolean;
}

/**
 * Why the source took a token: a WatchTokens event's reason, or 'FETCHED' / 'REFRESHED'
 * for its own GetOrgToken/GetUserToken and Refresh calls.
 */
export type TokenReason = 'INITIAL' | 'ISSUED' | 'RENEWED' | 'FORCED' | 'REISSUED' | 'FETCHED' | 'REFRESHED';

/** What withToken needs of a source. */
export interface TokenProvider {
  token(): Promise<string>;
  refresh(stale: string): Promise<string>;
}

/**
 * The current access token of one key, followed on one WatchTokens stream that
 * reconnects by itself with jittered exponential backoff (100 ms doubling to 30 s).
 * Emits 'token' whenever it takes a newer token.
 */
export declare class TokenSource extends EventEmitter implements TokenProvider {
  /**
   * @param connOrTarget a Connection to share (the source does not close it), or a target
   *   ('host:port', 'unix:///path') for a connection of its own, made with `options`'
   *   credentials
   */
  constructor(connOrTarget: string, options?: TokenSourceOptions);
  constructor(connOrTarget: Connection, options?: TokenKey);
  /** The org followed ('' for the broker's only org). */
  readonly org: string;
  /** The user followed; '' for the org token. */
  readonly userId: string;
  /**
   * The current access token, never an expired one (a token counts as expired 5 s before
   * its expiry). Waits for the first, up to timeoutMs (default 10000); asks the broker
   * itself when the stream is down and the held token has expired.
   * @throws TokenError
   */
  token(options?: CallOptions): Promise<string>;
  /**
   * Calls Refresh with `stale` as stale_access_token and returns the new token (many
   * callers that saw one token rejected cost one rotation).
   * @throws TokenError
   */
  refresh(stale?: string, options?: CallOptions): Promise<string>;
  /** Ends the stream, and the source's own connection. Idempotent. */
  close(): void;

  on(event: 'token', listener: (token: TokenInfo, reason: TokenReason) => void): this;
  once(event: 'token', listener: (token: TokenInfo, reason: TokenReason) => void): this;
  off(event: 'token', listener: (token: TokenInfo, reason: TokenReason) => void): this;
  addListener(event: 'token', listener: (token: TokenInfo, reason: TokenReason) => void): this;
  removeListener(event: 'token', listener: (token: TokenInfo, reason: TokenReason) => void): this;
  emit(event: 'token', token: TokenInfo, reason: TokenReason): boolean;
}

/**
 * Why no token could be had. `code` is a gRPC status name ('NOT_FOUND', 'UNAVAILABLE',
 * 'UNAUTHENTICATED', 'DEADLINE_EXCEEDED', 'CANCELLED' once closed, ...) or the reason of
 * the event that emptied the source ('REVOKED', 'UNAVAILABLE'); `message` is the broker's.
 */
export declare class TokenError extends Error {
  constructor(code: string, message: string);
  readonly name: 'TokenError';
  readonly code: string;
}

/** The part of fetch's signature withToken relies on. */
export type FetchLike = (input: any, init?: any) => Promise<{ readonly status: number }>;

/**
 * A fetch that sends `authorization: Bearer <token>` with the source's token; on a 401 it
 * calls `source.refresh(token)` and retries once when the body can be replayed (none,
 * string, bytes, URLSearchParams, Blob, FormData; not a stream or a Request's own body).
 * A second 401 is returned as it is.
 */
export declare function withToken(source: TokenProvider): typeof globalThis.fetch;
export declare function withToken<F extends FetchLike>(
  source: TokenProvider,
  fetchImpl: F,
): (...args: Parameters<F>) => ReturnType<F>;
