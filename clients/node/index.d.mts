// Type declarations of tokenbroker's ESM entry point (index.mjs): the same as index.d.ts.
export { Connection, TokenSource, TokenError, withToken } from './index.js';
export type {
  ConnectionOptions,
  TokenKey,
  TokenSourceOptions,
  CallOptions,
  TokenInfo,
  TokenReason,
  TokenProvider,
  FetchLike,
} from './index.js';
