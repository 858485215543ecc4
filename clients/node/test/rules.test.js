// The source's rules from clients/README.md, against a scripted in-process TokenService:
// tokens only grow in generation except a new stream's INITIAL, events empty the source,
// the first token is waited for up to the timeout, and the source asks the broker itself
// (for a token valid past the expiry margin) when the stream fails or its token expired.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { status } = require('@grpc/grpc-js');
const { TokenSource, TokenError } = require('tokenbroker');
const { eventually } = require('./support/processes');
const { fakeBroker, tokenMessage } = require('./support/fake');

const INITIAL = 'TOKEN_EVENT_REASON_INITIAL';
const RENEWED = 'TOKEN_EVENT_REASON_RENEWED';

function source(t, target, options = { org: 'demo', userId: 'u' }) {
  const src = new TokenSource(target, options);
  t.after(() => src.close());
  return src;
}

const tokenIs = (src, expected) => async () => ((await src.token()) === expected ? true : undefined);
const errorOf = (promise) => promise.then((value) => assert.fail(`a token ${value.slice(0, 8)}`), (e) => e);

test('an older generation never replaces the held token; a new stream\'s INITIAL does', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = (call, n) => {
    if (n === 1) {
      call.write({ reason: INITIAL, token: tokenMessage('gen3', 3) });
      call.write({ reason: RENEWED, token: tokenMessage('gen2-late', 2) });
      call.write({ reason: RENEWED, token: tokenMessage('gen4', 4) });
      call.end(); // the stream ends: the source reconnects
    } else if (n === 2) {
      call.write({ reason: INITIAL, token: tokenMessage('restarted-gen1', 1) });
    }
  };
  const src = source(t, fake.target);
  const seen = [];
  src.on('token', (info, reason) => seen.push(`${info.accessToken}/${reason}`));
  await eventually(tokenIs(src, 'restarted-gen1'), { what: 'the second stream\'s INITIAL' });
  assert.deepEqual(seen, ['gen3/INITIAL', 'gen4/RENEWED', 'restarted-gen1/INITIAL']);
  assert.deepEqual(fake.calls, [], 'all from the stream');
});

test('an UNAVAILABLE event empties the source until the next token', async (t) => {
  const fake = await fakeBroker(t);
  let stream;
  fake.onWatch = (call) => {
    stream = call;
    call.write({ reason: INITIAL, token: tokenMessage('first', 1) });
    call.write({ reason: 'TOKEN_EVENT_REASON_UNAVAILABLE', org: 'demo', userId: 'u', detail: 'the platform is down' });
  };
  const src = source(t, fake.target);
  const error = await eventually(() => src.token().then(() => undefined, (e) => e), { what: 'token() failing' });
  assert.ok(error instanceof TokenError);
  assert.equal(error.code, 'UNAVAILABLE');
  assert.equal(error.message, 'the platform is down');
  assert.deepEqual(fake.calls, [], 'raised at once, with no call of its own');

  stream.write({ reason: RENEWED, token: tokenMessage('second', 2) });
  await eventually(tokenIs(src, 'second'), { what: 'the next token' });
});

test('with no first token by the timeout token() raises DEADLINE_EXCEEDED; close() ends a wait', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = () => {}; // a stream that never sends
  const src = source(t, fake.target);
  const late = await errorOf(src.token({ timeoutMs: 300 }));
  assert.equal(late.code, 'DEADLINE_EXCEEDED');

  const waiting = errorOf(src.token({ timeoutMs: 60_000 }));
  src.close();
  assert.equal((await waiting).code, 'CANCELLED');
});

test('a stream failing before its first token: token() asks GetUserToken, valid past the margin', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = (call) => call.emit('error', { code: status.INTERNAL, details: 'stream broke' });
  fake.answer = () => tokenMessage('asked', 1);
  const src = source(t, fake.target);
  assert.equal(await src.token(), 'asked');
  const [[method, request]] = fake.calls;
  assert.equal(method, 'GetUserToken');
  assert.equal(request.userId, 'u');
  assert.deepEqual(request.minValidFor, { seconds: '6', nanos: 0 });
  // Held from then on: no second call.
  assert.equal(await src.token(), 'asked');
  assert.equal(fake.calls.length, 1);
});

test('an org source asks GetOrgToken, and the broker error comes back as is', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = (call) => call.emit('error', { code: status.NOT_FOUND, details: 'no such org' });
  fake.answer = () => ({ code: status.NOT_FOUND, details: 'org "nope" is not configured' });
  const src = source(t, fake.target, { org: 'nope' });
  const error = await errorOf(src.token());
  assert.equal(error.code, 'NOT_FOUND');
  assert.equal(error.message, 'org "nope" is not configured');
  assert.equal(fake.calls[0][0], 'GetOrgToken');
});

test('a held token within 5 s of its expiry is not returned: the source asks for a new one', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = (call) => call.write({ reason: INITIAL, token: tokenMessage('dying', 1, { expiresInMs: 3000 }) });
  fake.answer = () => tokenMessage('fresh', 2);
  const src = source(t, fake.target);
  await eventually(() => (fake.streams.length > 0 ? true : undefined));
  assert.equal(await src.token(), 'fresh');
  assert.equal(fake.calls.length, 1);
  assert.equal(await src.token(), 'fresh');
  assert.equal(fake.calls.length, 1);
});

test('refresh() sends the stale token and holds the answer', async (t) => {
  const fake = await fakeBroker(t);
  fake.onWatch = (call) => call.write({ reason: INITIAL, token: tokenMessage('old', 1) });
  fake.answer = () => tokenMessage('rotated', 2);
  const src = source(t, fake.target);
  assert.equal(await src.token(), 'old');
  assert.equal(await src.refresh('old'), 'rotated');
  assert.deepEqual(fake.calls.map(([m, r]) => [m, r.org, r.userId, r.staleAccessToken]), [['Refresh', 'demo', 'u', 'old']]);
  assert.equal(await src.token(), 'rotated');
  assert.equal(fake.calls.length, 1);
});
