// withToken: the bearer on every request, one Refresh and one retry on a 401 (only for a
// body that can be sent again), a second 401 returned as is; against the sandbox's API and
// a local server that always answers 401.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const { TokenSource, withToken } = require('tokenbroker');
const { isReplayable } = require('../lib/fetch');
const { startBroker } = require('./support/processes');

function source(t, target, options) {
  const src = new TokenSource(target, options);
  t.after(() => src.close());
  return src;
}

/** A local server that answers every request 401 and records what it saw. */
async function alwaysUnauthorized(t) {
  const seen = [];
  const server = http.createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      seen.push({ authorization: request.headers.authorization, body, custom: request.headers['x-custom'] });
      response.writeHead(401, { 'content-type': 'text/plain' }).end('no');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => server.close(resolve)));
  return { url: `http://127.0.0.1:${server.address().port}/`, seen };
}

test('the helper refreshes a revoked token and retries once', async (t) => {
  const { broker, sandbox } = await startBroker(t);
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  const fetchAuthed = withToken(src, fetch);
  const me = `${sandbox.url}/api/v1/expense/me`;

  const first = await fetchAuthed(me);
  assert.equal(first.status, 200);
  assert.equal((await first.json()).externalSourceId, 'EMP-00001');

  await sandbox.post('/sandbox/revoke', { access_token: await src.token() });
  const before = await sandbox.stats();
  const second = await fetchAuthed(me);
  assert.equal(second.status, 200);
  assert.equal((await second.json()).externalSourceId, 'EMP-00001');
  const after = await sandbox.stats();
  assert.equal(after.refresh_token - before.refresh_token, 1, 'one Refresh');
  assert.equal(after.api - before.api, 2, 'the 401 and the retry');
});

test('a second 401 is returned as is; a streaming body is not retried', async (t) => {
  const { broker } = await startBroker(t);
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00001' });
  const server = await alwaysUnauthorized(t);
  const fetchAuthed = withToken(src);

  const response = await fetchAuthed(server.url, { method: 'POST', body: 'replayable', headers: { 'x-custom': 'kept' } });
  assert.equal(response.status, 401);
  assert.equal(await response.text(), 'no');
  assert.equal(server.seen.length, 2);
  const [one, two] = server.seen;
  assert.match(one.authorization, /^Bearer \S+$/);
  assert.match(two.authorization, /^Bearer \S+$/);
  assert.notEqual(one.authorization, two.authorization, 'the retry carries the refreshed token');
  assert.deepEqual([one.body, two.body, one.custom, two.custom], ['replayable', 'replayable', 'kept', 'kept']);

  server.seen.length = 0;
  const stream = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode('once'));
      controller.close();
    },
  });
  const streamed = await fetchAuthed(server.url, { method: 'POST', body: stream, duplex: 'half' });
  assert.equal(streamed.status, 401);
  assert.equal(server.seen.length, 1, 'a stream cannot be sent again');
  assert.equal(server.seen[0].body, 'once');

  server.seen.length = 0;
  const request = new Request(server.url, { method: 'PUT', body: 'in the request', headers: { 'x-custom': 'from request' } });
  const own = await fetchAuthed(request);
  assert.equal(own.status, 401);
  assert.equal(server.seen.length, 1, "a Request's own body is spent by the first send");
  assert.equal(server.seen[0].custom, 'from request', "the Request's headers are kept");
});

test('which bodies are replayable', () => {
  const replayable = [undefined, null, 'text', new ArrayBuffer(2), new Uint8Array(2), new DataView(new ArrayBuffer(1)),
    new URLSearchParams('a=1'), new Blob(['x']), new FormData()];
  for (const body of replayable) assert.equal(isReplayable('http://x/', { body }), true, String(body));
  assert.equal(isReplayable('http://x/', undefined), true);
  assert.equal(isReplayable(new URL('http://x/'), {}), true);
  assert.equal(isReplayable(new Request('http://x/'), undefined), true, 'a Request without a body');

  const stream = new ReadableStream();
  assert.equal(isReplayable('http://x/', { body: stream }), false);
  assert.equal(isReplayable('http://x/', { body: (async function* () { yield 'x'; })() }), false);
  assert.equal(isReplayable(new Request('http://x/', { method: 'POST', body: 'x' }), undefined), false);
  assert.equal(isReplayable(new Request('http://x/', { method: 'POST', body: 'x' }), { body: 'y' }), true,
    'init.body replaces the Request body');
});
