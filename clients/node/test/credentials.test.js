// Targets and credentials as the broker serves them: an API key on every call, a Unix
// socket target, and TLS (server-authenticated and mutual) with certificates made by
// openssl for the test.
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const { Connection, TokenError, TokenSource } = require('tokenbroker');
const { apiKeyCaller, startBroker } = require('./support/processes');
const { rawClient } = require('./support/raw');

function source(t, target, options) {
  const src = new TokenSource(target, options);
  t.after(() => src.close());
  return src;
}

test('an API key is sent on every call; without it the broker answers UNAUTHENTICATED', async (t) => {
  const caller = apiKeyCaller();
  const { broker } = await startBroker(t, { extraConfig: caller.config });
  const raw = rawClient(t, broker.target, { apiKey: caller.key });
  const expected = (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00003' })).token.accessToken;

  const keyed = source(t, broker.target, { org: 'demo', userId: 'EMP-00003', apiKey: caller.key });
  assert.equal(await keyed.token(), expected);
  // Refresh carries the key too.
  const rotated = await keyed.refresh(expected);
  assert.notEqual(rotated, expected);

  const shared = new Connection(broker.target, { apiKey: caller.key });
  t.after(() => shared.close());
  assert.equal(await source(t, shared, { org: 'demo' }).token(),
    (await raw.call('GetOrgToken', { org: 'demo' })).token.accessToken);

  const anonymous = source(t, broker.target, { org: 'demo', userId: 'EMP-00003' });
  const error = await anonymous.token().then(() => assert.fail('a token without the key'), (e) => e);
  assert.ok(error instanceof TokenError);
  assert.equal(error.code, 'UNAUTHENTICATED');
  assert.doesNotMatch(String(error.message), new RegExp(caller.key));
});

test('a Unix socket target works', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbroker-node-sock-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { broker } = await startBroker(t, { listen: `unix://${path.join(dir, 'broker.sock')}` });
  assert.match(broker.target, /^unix:\/\/\//);
  const src = source(t, broker.target, { org: 'demo', userId: 'EMP-00004' });
  const token = await src.token();
  const raw = rawClient(t, broker.target);
  assert.equal(token, (await raw.call('GetUserToken', { org: 'demo', userId: 'EMP-00004' })).token.accessToken);
  const rotated = await src.refresh(token);
  assert.notEqual(rotated, token);
  assert.equal(await src.token(), rotated);
});

/** A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate. */
function makeCertificates(dir) {
  const openssl = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];
  openssl('req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=tokenbroker test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
  const leaf = (name, subject, extensions) => {
    fs.writeFileSync(path.join(dir, `${name}.ext`), extensions);
    openssl('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject);
    openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
      '-out', `${name}.pem`, '-days', '1', '-extfile', `${name}.ext`);
  };
  leaf('server', '/CN=localhost', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
  leaf('client', '/CN=client.example', 'subjectAltName=DNS:client.example\nextendedKeyUsage=clientAuth\n');
  const read = (file) => fs.readFileSync(path.join(dir, file));
  return { ca: read('ca.pem'), clientCert: read('client.pem'), clientKey: read('client.key') };
}

test('TLS: the broker is trusted by its CA, and a client certificate names the caller', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tokenbroker-node-tls-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = makeCertificates(dir);
  const extraConfig = [
    '[server.tls]',
    `cert_file = "${path.join(dir, 'server.pem')}"`,
    `key_file = "${path.join(dir, 'server.key')}"`,
    `client_ca_file = "${path.join(dir, 'ca.pem')}"`,
    '[[callers]]',
    'name = "tls-tests"',
    'tls_names = ["client.example"]',
    'orgs = ["*"]',
    'permissions = ["org_token", "user_token", "refresh", "watch"]',
  ].join('\n');
  const { broker } = await startBroker(t, { extraConfig });
  // By name: Node warns about TLS server names that are IP addresses (RFC 6066).
  const target = broker.target.replace('127.0.0.1', 'localhost');

  const mutual = source(t, target, {
    org: 'demo', userId: 'EMP-00005', rootCerts: certs.ca, certChain: certs.clientCert, privateKey: certs.clientKey,
  });
  const token = await mutual.token();
  assert.equal(typeof token, 'string');
  assert.notEqual(await mutual.refresh(token), token);

  // TLS without a client certificate: a channel the broker accepts, but no caller.
  const anonymous = source(t, target, { org: 'demo', userId: 'EMP-00005', rootCerts: certs.ca });
  assert.equal((await anonymous.token().then(() => null, (e) => e))?.code, 'UNAUTHENTICATED');

  // Plaintext to a TLS port gets no answer at all.
  const plaintext = source(t, target, { org: 'demo', userId: 'EMP-00005' });
  assert.equal((await plaintext.token({ timeoutMs: 3000 }).then(() => null, (e) => e))?.code, 'UNAVAILABLE');
});
