// Test support (not a test): a plain grpc-js client of TokenService, independent of the
// package's Connection and TokenSource, for the tests to see the broker's own answers.
'use strict';
const grpc = require('@grpc/grpc-js');
const { TokenServiceClient } = require('../../lib/descriptor');

/** A raw client: `await raw.call('GetUserToken', { userId })` -> the answer. */
class RawClient {
  constructor(target, { apiKey } = {}) {
    this.client = new TokenServiceClient(target, grpc.credentials.createInsecure());
    this.apiKey = apiKey;
  }

  call(method, request) {
    const metadata = new grpc.Metadata();
    if (this.apiKey) metadata.set('authorization', `Bearer ${this.apiKey}`);
    return new Promise((resolve, reject) =>
      this.client[method](request, metadata, { deadline: Date.now() + 10_000 }, (error, answer) =>
        error ? reject(error) : resolve(answer),
      ),
    );
  }

  close() {
    this.client.close();
  }
}

/** A raw client closed by `t.after`. */
function rawClient(t, target, options) {
  const raw = new RawClient(target, options);
  t.after(() => raw.close());
  return raw;
}

module.exports = { rawClient };
