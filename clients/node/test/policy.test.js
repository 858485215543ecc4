// The contract's numbers as pure functions: reconnect backoff (100 ms doubling to 30 s,
// drawn between half and all), the 5 s expiry margin, and the proto time conversions.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const policy = require('../lib/policy');
const { TokenInfo } = require('../lib/token');
const { inspect } = require('node:util');

test('backoff ceilings double from 100 ms and stop at 30 s', () => {
  const ceilings = Array.from({ length: 12 }, (_, attempt) => policy.backoffCeiling(attempt));
  assert.deepEqual(ceilings, [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]);
  assert.equal(policy.backoffCeiling(10_000), 30_000);
});

test('each backoff wait is drawn between half and all of its ceiling', () => {
  assert.equal(policy.backoffDelay(0, () => 0), 50);
  assert.equal(policy.backoffDelay(3, () => 0.5), 600);
  assert.ok(policy.backoffDelay(20, () => 0.999999) <= 30_000);
  assert.equal(policy.backoffDelay(20, () => 0), 15_000);
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = policy.backoffCeiling(attempt);
    for (let i = 0; i < 50; i++) {
      const delay = policy.backoffDelay(attempt);
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `${delay} for ceiling ${ceiling}`);
    }
  }
});

test('a token counts as expired from 5 s before its expiry; one with none never', () => {
  const expiresAt = 1_000_000;
  assert.equal(policy.isExpired(expiresAt, expiresAt - 5001), false);
  assert.equal(policy.isExpired(expiresAt, expiresAt - 5000), true);
  assert.equal(policy.isExpired(expiresAt, expiresAt + 1), true);
  assert.equal(policy.isExpired(null, Number.MAX_SAFE_INTEGER), false);
});

test('protobuf Timestamps and Durations convert to and from milliseconds', () => {
  assert.equal(policy.timestampMs({ seconds: '1700000000', nanos: 250_000_000 }), 1_700_000_000_250);
  assert.equal(policy.timestampMs(null), null);
  assert.deepEqual(policy.durationOf(5000), { seconds: 5, nanos: 0 });
  assert.deepEqual(policy.durationOf(1500), { seconds: 1, nanos: 500_000_000 });
});

test('a TokenInfo shows no more than 8 characters of its token', () => {
  const secret = 'abcdefgh-the-rest-is-secret';
  const info = TokenInfo.fromMessage({
    accessToken: secret, tokenType: 'Bearer', expiresAt: { seconds: '2000000000', nanos: 0 }, issuedAt: null,
    org: 'demo', userId: 'EMP-00001', generation: '7', scope: '',
  });
  assert.equal(info.accessToken, secret);
  assert.equal(info.generation, 7);
  assert.equal(info.expiresAt.getTime(), 2_000_000_000_000);
  assert.equal(info.isExpired(2_000_000_000_000 - 6000), false);
  assert.equal(info.isExpired(2_000_000_000_000 - 4000), true);
  for (const shown of [inspect(info), JSON.stringify(info), `${inspect({ nested: info })}`]) {
    assert.doesNotMatch(shown, /the-rest-is-secret/);
    assert.match(shown, /abcdefgh/);
  }
});
