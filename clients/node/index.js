// tokenbroker: the current broker token in one line. The package's CommonJS entry point;
// index.mjs re-exports it for ESM, and index.d.ts describes it.
'use strict';
const { Connection } = require('./lib/connection');
const { TokenError } = require('./lib/errors');
const { TokenSource } = require('./lib/source');
const { withToken } = require('./lib/fetch');

module.exports = { TokenSource, TokenError, Connection, withToken };
