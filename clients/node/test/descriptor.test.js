// The committed proto.json is what generate.js makes from ../../proto now, and it carries
// the well-known types: Timestamps and Durations encode and decode.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const { generate, OUTPUT } = require('../generate');
const { definition } = require('../lib/descriptor');

test('proto.json equals a fresh generation from the proto (run `node generate.js`)', () => {
  assert.equal(fs.readFileSync(OUTPUT, 'utf8'), generate());
});

test('Timestamp and Duration fields survive encoding', () => {
  const service = definition['tokenbroker.v1.TokenService'];
  const request = { org: 'demo', userId: 'EMP-00001', minValidFor: { seconds: 5, nanos: 250_000_000 } };
  const decoded = service.GetUserToken.requestDeserialize(service.GetUserToken.requestSerialize(request));
  assert.deepEqual(decoded.minValidFor, { seconds: '5', nanos: 250_000_000 });

  const token = {
    accessToken: 'a', tokenType: 'Bearer', org: 'demo', userId: '', generation: '3', scope: '',
    expiresAt: { seconds: '1700000000', nanos: 5 }, issuedAt: { seconds: '1699990000', nanos: 0 },
  };
  const answer = service.GetOrgToken.responseDeserialize(service.GetOrgToken.responseSerialize({ token }));
  assert.deepEqual(answer.token, token);
  const unset = service.GetOrgToken.responseDeserialize(service.GetOrgToken.responseSerialize({ token: { accessToken: 'b' } }));
  assert.equal(unset.token.expiresAt, null, 'an unset expiry decodes as null: a long-lived token');

  const watched = service.WatchTokens.responseDeserialize(
    service.WatchTokens.responseSerialize({ reason: 'TOKEN_EVENT_REASON_REVOKED', detail: 'gone', userId: 'u' }),
  );
  assert.equal(watched.reason, 'TOKEN_EVENT_REASON_REVOKED');
  assert.equal(watched.token, null);
});
