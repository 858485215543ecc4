// Test support (not a test): an in-process TokenService whose answers and stream messages
// each test scripts, for the source's rules that the real broker cannot be made to show
// on demand (an older generation after a newer one, an UNAVAILABLE event, a stream that
// never sends).
'use strict';
const grpc = require('@grpc/grpc-js');
const { TokenServiceClient } = require('../../lib/descriptor');

/** A Token message for user 'u' of org 'demo'. */
function tokenMessage(accessToken, generation, { expiresInMs = 3_600_000 } = {}) {
  const expires = Date.now() + expiresInMs;
  return {
    accessToken,
    tokenType: 'Bearer',
    org: 'demo',
    userId: 'u',
    generation: String(generation),
    expiresAt: { seconds: String(Math.floor(expires / 1000)), nanos: (expires % 1000) * 1e6 },
  };
}

class FakeBroker {
  /** Unary requests seen: [method, request]. */
  calls = [];
  /** Open and past WatchTokens calls, in order. */
  streams = [];
  /** Scripted per test: what each new stream does. */
  onWatch = () => {};
  /** Scripted per test: the unary answer's token, or an error { code, details }. */
  answer = () => ({ code: grpc.status.UNIMPLEMENTED, details: 'not scripted' });

  async start() {
    this.server = new grpc.Server();
    const unary = (method) => (call, callback) => {
      this.calls.push([method, call.request]);
      const answer = this.answer(method, call.request);
      if (typeof answer.code === 'number') callback(answer);
      else callback(null, { token: answer });
    };
    this.server.addService(TokenServiceClient.service, {
      GetOrgToken: unary('GetOrgToken'),
      GetUserToken: unary('GetUserToken'),
      Refresh: unary('Refresh'),
      WatchTokens: (call) => {
        this.streams.push(call);
        this.onWatch(call, this.streams.length);
      },
    });
    const port = await new Promise((resolve, reject) =>
      this.server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
    this.target = `127.0.0.1:${port}`;
    return this;
  }

  stop() {
    this.server.forceShutdown();
  }
}

/** A started FakeBroker, stopped by `t.after`. */
async function fakeBroker(t) {
  const fake = await new FakeBroker().start();
  t.after(() => fake.stop());
  return fake;
}

module.exports = { fakeBroker, tokenMessage };
