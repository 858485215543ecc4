// tokenbroker's ESM entry point: the CommonJS build re-exported, so both module systems
// share one implementation (and `instanceof TokenError` holds across them).
import tokenbroker from './index.js';

export const { TokenSource, TokenError, Connection, withToken } = tokenbroker;
