// TokenSource against the real broker and sandbox: it follows rotations, survives a
// broker restart, empties on REVOKED, reports the broker's errors, never hands out an
// expired token, shares one Connection among sources, and lets the process exit once
// closed.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const path = require('node:path');
const { Connection, TokenError, TokenSource } = require('tokenbroker');
const { startBroker, eventually, sleep, within } = require('./support/processes');
const { rawClient } = require('./support/raw');

/** A TokenSource closed by `t.after`. */
function source(t, target, options) {
  const src = new TokenSource(target, options);
  t.after(() => src.close());
  return src;
}

/** The TokenError a promise rejects with; fails the test if it resolves. */
async function rejection(promise) {
  const outcome = await promise.then(
    (value) => ({ value }),
    (error) => ({ error }),
  );
  assert.ok(outcome.error, `expected a TokenError, got a token ${String(outcome.value).slice(0, 8)}...`);
  assert.ok(outcome.error instanceof TokenError, `not a TokenError: ${outcome.error}`);
  return outcome.error;
}

test('a source follows a rotation forced by another client', async (t) => {
  const { broker } = await startBroker(t);
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  const t1 = await src.token();
  const raw = rawClient(t, broker.target);
  const t2 = (await raw.call('Refresh', { org: 'demo', userId: 'EMP-00001', staleAccessToken: t1 })).token.accessToken;
  assert.notEqual(t2, t1);
  await eventually(async () => ((await src.token()) === t2 ? true : undefined), { what: 'the source taking t2' });
});

test('a source survives a broker restart and takes the new broker state', async (t) => {
  const { broker } = await startBroker(t);
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  const t1 = await src.token();

  await broker.stop();
  // No broker to ask: the source answers with the token it holds, still valid.
  assert.equal(await src.token(), t1);

  await broker.restart();
  const t2 = await eventually(async () => {
    const token = await src.token();
    return token !== t1 ? token : undefined;
  }, { what: 'the source reconnecting' });
  const raw = rawClient(t, broker.target);
  const fresh = (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00001' })).token.accessToken;
  assert.equal(t2, fresh);
});

test('a REVOKED event empties the source', async (t) => {
  const { broker, sandbox } = await startBroker(t, { tokenLifetime: '6s' });
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  await src.token();
  await sandbox.post('/sandbox/remove-user', { org: 'demo', user_id: 'EMP-00001' });
  // Until the token expires the source may still answer (or fail asking); then REVOKED.
  const error = await eventually(
    () => src.token().then(() => undefined, (e) => (e.code === 'REVOKED' ? e : undefined)),
    { what: 'token() raising REVOKED', intervalMs: 200, timeoutMs: 30_000 },
  );
  assert.ok(error instanceof TokenError);
  assert.ok(error.message.length > 0, 'the event detail is the message');
  // Emptied: it stays so until a next token.
  assert.equal((await rejection(src.token())).code, 'REVOKED');
});

test('an unknown user raises NOT_FOUND with the broker message', async (t) => {
  const { broker } = await startBroker(t);
  const raw = rawClient(t, broker.target);
  const expected = await raw.call('GetUserToken', { org: 'demo', userId: 'no-such-user' }).then(
    () => assert.fail('the broker knows no-such-user'),
    (error) => error.details,
  );
  const src = source(t, broker.target, { org: 'demo', userId: 'no-such-user' });
  const error = await rejection(src.token());
  assert.equal(error.code, 'NOT_FOUND');
  assert.equal(error.message, expected);
});

test('token() never returns an expired token: it asks the broker and reports UNAVAILABLE', async (t) => {
  const { broker } = await startBroker(t, { tokenLifetime: '8s' });
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  const held = await src.token();
  const raw = rawClient(t, broker.target);
  const info = (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00001' })).token;
  await broker.stop();

  // While more than 5 s are left the held token is the answer; from then on it is not.
  const expiresAt = Number(info.expiresAt.seconds) * 1000 + Math.floor(info.expiresAt.nanos / 1e6);
  if (info.accessToken === held) {
    while (Date.now() < expiresAt - 5000) {
      const token = await src.token().catch((e) => e);
      if (Date.now() < expiresAt - 5000 - 100) assert.equal(token, held);
      await sleep(100);
    }
  }
  await eventually(() => (Date.now() >= expiresAt - 5000 ? true : undefined), { timeoutMs: 30_000 });
  const error = await rejection(src.token());
  assert.equal(error.code, 'UNAVAILABLE');
  // From its own GetUserToken (connection refused), not the stream's "shutting down".
  assert.doesNotMatch(error.message, /shutting down/);
});

test('sources on one Connection share it and each follow their own key', async (t) => {
  const { broker } = await startBroker(t);
  const conn = new Connection(broker.target);
  t.after(() => conn.close());
  const a = source(t, conn, { org: 'demo', userId: 'EMP-00001' });
  const b = source(t, conn, { org: 'demo', userId: 'EMP-00002' });
  const org = source(t, conn, { org: 'demo' });
  const raw = rawClient(t, broker.target);
  const expected = {
    a: (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00001' })).token.accessToken,
    b: (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00002' })).token.accessToken,
    org: (await raw.call('GetOrgToken', { org: 'demo' })).token.accessToken,
  };
  assert.deepEqual({ a: await a.token(), b: await b.token(), org: await org.token() }, expected);

  // A rotation of one key reaches its source only.
  const rotated = (await raw.call('Refresh', { org: 'demo', userId: 'EMP-00002', staleAccessToken: expected.b })).token.accessToken;
  await eventually(async () => ((await b.token()) === rotated ? true : undefined), { what: 'b taking its rotation' });
  assert.equal(await a.token(), expected.a);
  assert.equal(await org.token(), expected.org);

  // Closing a source leaves the shared connection to the others.
  a.close();
  assert.equal((await rejection(a.token())).code, 'CANCELLED');
  assert.equal(await b.token(), rotated);
  assert.equal(conn.closed, false);
  // Closing the connection ends the sources made from it.
  conn.close();
  assert.equal((await rejection(b.token())).code, 'CANCELLED');
});

/**
 * Runs a child process that takes a token, then closes its source when told: the child
 * must exit by itself. `beforeClose` runs between the two.
 */
async function closeInChild(t, target, beforeClose) {
  const script = `
    const { TokenSource } = require(${JSON.stringify(path.join(__dirname, '..'))});
    const src = new TokenSource(process.argv[1], { org: 'demo', userId: 'EMP-00001' });
    src.token().then(() => { console.log('got'); process.stdin.once('data', () => src.close()); });
  `;
  const child = spawn(process.execPath, ['-e', script, target], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  t.after(() => child.kill('SIGKILL'));
  await new Promise((resolve) => child.stdout.once('data', resolve));
  await beforeClose();
  child.stdin.end('close\n');
  assert.equal(await within(exited, 20_000, 'still running'), 0);
}

test('a closed source lets the process exit', async (t) => {
  await t.test('while its stream is open', async (t) => {
    const { broker } = await startBroker(t);
    await closeInChild(t, broker.target, async () => {});
  });
  await t.test('while it waits to reconnect', async (t) => {
    const { broker } = await startBroker(t);
    await closeInChild(t, broker.target, async () => {
      await broker.stop();
      await sleep(300); // the stream has ended by then; close() finds a backoff timer
    });
  });
});
