// Self-check of server.mjs against the contract in README.md:  node selfcheck.mjs
// Needs `npm install` done here and `openssl` on PATH (for the TLS check).
import * as assert from 'node:assert/strict';
import { spawn, execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'oidc-selfcheck-'));
const SECRET = 's3cret';
const RESOURCE = 'https://billing.example.com';
const REDIRECT = 'http://127.0.0.1/callback';

const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const ecJwk = { ...ec.publicKey.export({ format: 'jwk' }), kid: 'ec-1' };
const rsaJwk = { ...rsa.publicKey.export({ format: 'jwk' }), kid: 'rsa-1' };
const all = ['client_credentials', 'authorization_code', 'refresh_token'];
const scope = 'invoices.read invoices.write';

function writeConfig(name, extra = {}) {
  const file = path.join(dir, name);
  fs.writeFileSync(file, JSON.stringify({
    tls: null,
    token_lifetime: 3600,
    clients: [
      { client_id: 'basic-client', client_secret: SECRET, auth_method: 'client_secret_basic', scope, grant_types: all },
      { client_id: 'post-client', client_secret: SECRET, auth_method: 'client_secret_post', scope, grant_types: all },
      { client_id: 'jwt-client', auth_method: 'private_key_jwt', jwks: { keys: [ecJwk, rsaJwk] }, scope, grant_types: all },
      { client_id: 'public-client', auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'] },
      { client_id: 'code-only', client_secret: SECRET, auth_method: 'client_secret_basic', scope, grant_types: ['authorization_code', 'refresh_token'] },
    ],
    users: ['EMP-00001', 'EMP-00002'],
    resources: { [RESOURCE]: { scope } },
    ...extra,
  }));
  return file;
}

async function start(file) {
  const t0 = Date.now();
  const child = spawn(process.execPath, [path.join(here, 'server.mjs'), file], { stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  const line = await new Promise((resolve, reject) => {
    let buf = '';
    child.stdout.on('data', (d) => {
      buf += d;
      if (buf.includes('\n')) resolve(buf.split('\n')[0]);
    });
    child.once('exit', (code) => reject(new Error(`server exited ${code}: ${stderr}`)));
  });
  const ready = JSON.parse(line);
  return { child, ready, ms: Date.now() - t0, stderr: () => stderr };
}

function request(base, method, p, { form, headers = {}, ca } = {}) {
  const url = new URL(p, base);
  const body = form ? new URLSearchParams(form).toString() : undefined;
  const h = { ...headers };
  if (body !== undefined) {
    h['content-type'] = 'application/x-www-form-urlencoded';
    h['content-length'] = Buffer.byteLength(body);
  }
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(url, { method, headers: h, ca, agent: false }, (res) => {
      let text = '';
      res.on('data', (d) => { text += d; });
      res.on('end', () => {
        let json;
        try { json = JSON.parse(text); } catch {}
        resolve({ status: res.statusCode, headers: res.headers, json, text });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const basic = (id, secret) => `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
const jwtPayload = (t) => JSON.parse(Buffer.from(t.split('.')[1], 'base64url'));
function assertion({ alg = 'ES256', key = ec.privateKey, kid = 'ec-1', claims = {} }) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg, typ: 'JWT', ...(kid ? { kid } : {}) };
  const payload = { iss: 'jwt-client', sub: 'jwt-client', jti: crypto.randomUUID(), iat: now, exp: now + 60, ...claims };
  for (const k of Object.keys(payload)) if (payload[k] === undefined) delete payload[k];
  const input = `${b64(header)}.${b64(payload)}`;
  const sig = alg === 'ES256'
    ? crypto.sign('sha256', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' })
    : crypto.sign('sha256', Buffer.from(input), key);
  return `${input}.${sig.toString('base64url')}`;
}
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

let checks = 0;
function ok(name) { checks += 1; console.log(`ok ${checks} - ${name}`); }

// ------------------------------------------------------------------ plain HTTP
const srv = await start(writeConfig('plain.json'));
const { issuer, port } = srv.ready;
assert.equal(issuer, `http://127.0.0.1:${port}`);
assert.ok(srv.ms < 5000, `startup took ${srv.ms} ms`);
ok(`ready line ${JSON.stringify(srv.ready)} after ${srv.ms} ms`);
const T = (form, headers) => request(issuer, 'POST', '/token', { form, headers });

{
  const d = await request(issuer, 'GET', '/.well-known/openid-configuration');
  assert.equal(d.status, 200);
  assert.equal(d.json.issuer, issuer);
  assert.equal(d.json.token_endpoint, `${issuer}/token`);
  for (const m of ['client_secret_basic', 'client_secret_post', 'private_key_jwt', 'none']) {
    assert.ok(d.json.token_endpoint_auth_methods_supported.includes(m), m);
  }
  assert.ok(d.json.grant_types_supported.includes('client_credentials'));
  ok(`discovery: token_endpoint=${d.json.token_endpoint}, auth methods=${d.json.token_endpoint_auth_methods_supported}, algs=${d.json.token_endpoint_auth_signing_alg_values_supported}`);
}

let orgToken;
{
  const r = await T({ grant_type: 'client_credentials', scope: 'invoices.read' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.token_type, 'Bearer');
  assert.equal(r.json.expires_in, 3600);
  assert.equal(r.json.scope, 'invoices.read');
  assert.equal(r.json.refresh_token, undefined);
  orgToken = r.json.access_token;
  ok(`client_credentials basic: opaque token, ${orgToken.length} chars, ${r.headers['content-type']}, cache-control=${r.headers['cache-control']}`);
}
{
  const r = await T({ grant_type: 'client_credentials', scope, client_id: 'post-client', client_secret: SECRET });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.scope, scope);
  ok('client_credentials post');
}
{
  const r = await T({ grant_type: 'client_credentials' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.scope, undefined);
  ok('client_credentials without scope: no scope in answer');
}
{
  const r = await T({ grant_type: 'client_credentials', client_id: 'basic-client', client_secret: SECRET });
  assert.equal(r.status, 200, r.text);
  ok('client_secret_basic client may also send its secret in the body (oidc-provider accepts either)');
}
{
  const r = await T({ grant_type: 'client_credentials' }, { authorization: basic('basic-client', 'wrong') });
  assert.equal(r.status, 401);
  assert.deepEqual(r.json, { error: 'invalid_client', error_description: 'client authentication failed' });
  assert.match(r.headers['www-authenticate'], /^Basic realm=/);
  const p = await T({ grant_type: 'client_credentials', client_id: 'post-client', client_secret: 'wrong' });
  assert.equal(p.status, 401);
  assert.equal(p.json.error, 'invalid_client');
  const u = await T({ grant_type: 'client_credentials' }, { authorization: basic('nobody', SECRET) });
  assert.equal(u.status, 401);
  ok(`wrong secret -> 401 ${JSON.stringify(r.json)}; www-authenticate: ${r.headers['www-authenticate']}`);
}
{
  // A scope the provider knows but the client is not registered for.
  const cfgScopeOnly = await T({ grant_type: 'client_credentials', scope: 'openid' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(cfgScopeOnly.status, 400);
  assert.equal(cfgScopeOnly.json.error, 'invalid_scope');
  // A scope nobody knows: silently dropped.
  const unknown = await T({ grant_type: 'client_credentials', scope: 'invoices.read bogus' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(unknown.status, 200);
  assert.equal(unknown.json.scope, 'invoices.read');
  ok(`scope not allowed for client -> 400 ${JSON.stringify(cfgScopeOnly.json)}; unknown scope silently dropped`);
}
{
  const r = await T({ grant_type: 'client_credentials' }, { authorization: basic('code-only', SECRET) });
  assert.equal(r.status, 400);
  assert.equal(r.json.error, 'invalid_request');
  const g = await T({ grant_type: 'password' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(g.status, 400);
  assert.equal(g.json.error, 'unsupported_grant_type');
  ok(`grant type not registered for client -> 400 ${JSON.stringify(r.json)}; unknown grant -> ${JSON.stringify(g.json)}`);
}
{
  const r = await T({ grant_type: 'client_credentials', resource: RESOURCE, scope: 'invoices.read' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(r.status, 200, r.text);
  const p = jwtPayload(r.json.access_token);
  assert.equal(p.aud, RESOURCE);
  assert.equal(p.iss, issuer);
  assert.equal(p.client_id, 'basic-client');
  assert.equal(p.scope, 'invoices.read');
  assert.equal(p.exp - p.iat, 3600);
  // The JWT org token is accepted by /authorization-grant too.
  const g = await request(issuer, 'POST', '/authorization-grant', { form: { user_id: 'EMP-00001' }, headers: { authorization: `Bearer ${r.json.access_token}` } });
  assert.equal(g.status, 200, g.text);
  const bad = await T({ grant_type: 'client_credentials', resource: 'https://unknown.example.com' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error, 'invalid_target');
  const two = await T({ grant_type: 'client_credentials', resource: [RESOURCE, `${RESOURCE}/x`] }, { authorization: basic('basic-client', SECRET) });
  assert.equal(two.status, 400);
  ok(`resource on client_credentials -> JWT (${r.json.access_token.length} chars) aud=${p.aud} claims=${Object.keys(p)}; unknown resource -> ${JSON.stringify(bad.json)}`);
}

// private_key_jwt
{
  const A = (a, extra = {}) => T({ grant_type: 'client_credentials', scope: 'invoices.read', client_assertion_type: JWT_BEARER, client_assertion: a, ...extra });
  const results = {};
  const cases = {
    'ES256 aud=issuer': [assertion({ claims: { aud: issuer } }), 200],
    'ES256 aud=token endpoint': [assertion({ claims: { aud: `${issuer}/token` } }), 200],
    'ES256 aud=[other, issuer]': [assertion({ claims: { aud: ['https://x', issuer] } }), 200],
    'ES256 no kid': [assertion({ kid: undefined, claims: { aud: issuer } }), 200],
    'ES256 no iat': [assertion({ claims: { aud: issuer, iat: undefined } }), 200],
    'ES256 exp in 1 day': [assertion({ claims: { aud: issuer, exp: Math.floor(Date.now() / 1000) + 86400 } }), 200],
    'RS256 aud=issuer': [assertion({ alg: 'RS256', key: rsa.privateKey, kid: 'rsa-1', claims: { aud: issuer } }), 200],
    'ES256 with client_id param': [assertion({ claims: { aud: issuer } }), 200, { client_id: 'jwt-client' }],
    'aud=issuer/': [assertion({ claims: { aud: `${issuer}/` } }), 401],
    'aud=other': [assertion({ claims: { aud: 'https://other.example.com' } }), 401],
    'no aud': [assertion({ claims: { aud: undefined } }), 401],
    'no jti': [assertion({ claims: { aud: issuer, jti: undefined } }), 401],
    'no exp': [assertion({ claims: { aud: issuer, exp: undefined } }), 401],
    'expired 20s ago': [assertion({ claims: { aud: issuer, exp: Math.floor(Date.now() / 1000) - 20 } }), 401],
    'iss != client_id': [assertion({ claims: { aud: issuer, iss: 'someone' } }), 401],
    'unknown kid': [assertion({ kid: 'nope', claims: { aud: issuer } }), 401],
    'bad signature': [assertion({ key: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey, claims: { aud: issuer } }), 401],
    'HS256': [(() => { const i = `${b64({ alg: 'HS256' })}.${b64({ iss: 'jwt-client', sub: 'jwt-client', aud: issuer, jti: 'h', exp: Math.floor(Date.now() / 1000) + 60 })}`; return `${i}.${crypto.createHmac('sha256', 'k').update(i).digest('base64url')}`; })(), 401],
  };
  for (const [name, [a, want, extra]] of Object.entries(cases)) {
    const r = await A(a, extra);
    results[name] = `${r.status}${r.json?.error ? ` ${r.json.error}` : ''}`;
    assert.equal(r.status, want, `${name}: ${r.text}`);
  }
  const once = assertion({ claims: { aud: issuer } });
  assert.equal((await A(once)).status, 200);
  const replay = await A(once);
  assert.equal(replay.status, 401);
  results['replayed jti'] = `${replay.status} ${replay.json.error}`;
  const noSub = await A(assertion({ claims: { aud: issuer, sub: undefined } }));
  results['no sub'] = `${noSub.status} ${noSub.json.error}`;
  assert.equal(noSub.status, 401);
  const noType = await T({ grant_type: 'client_credentials', client_assertion: assertion({ claims: { aud: issuer } }) });
  results['no client_assertion_type'] = `${noType.status} ${noType.json.error}`;
  assert.equal(noType.status, 400);
  ok(`private_key_jwt: ${JSON.stringify(results)}`);
}

// authorization grant, code exchange, refresh rotation, reuse
{
  const AG = (form, auth) => request(issuer, 'POST', '/authorization-grant', { form, headers: auth ? { authorization: auth } : {} });
  const missing = await AG({ user_id: 'EMP-00001' });
  assert.equal(missing.status, 401);
  assert.deepEqual(missing.json, { error: 'invalid_token' });
  const bad = await AG({ user_id: 'EMP-00001' }, 'Bearer not-a-token');
  assert.equal(bad.status, 401);
  const unknown = await AG({ user_id: 'EMP-99999' }, `Bearer ${orgToken}`);
  assert.equal(unknown.status, 404);
  assert.deepEqual(unknown.json, { error: 'unknown_user' });
  const g = await AG({ user_id: 'EMP-00001' }, `Bearer ${orgToken}`);
  assert.equal(g.status, 200, g.text);
  ok(`authorization-grant: code ${g.json.code.length} chars; no bearer/bad bearer -> 401, unknown user -> 404`);

  const ex = await T({ grant_type: 'authorization_code', code: g.json.code, redirect_uri: REDIRECT }, { authorization: basic('basic-client', SECRET) });
  assert.equal(ex.status, 200, ex.text);
  assert.ok(ex.json.access_token && ex.json.refresh_token && ex.json.id_token);
  assert.equal(ex.json.expires_in, 3600);
  assert.equal(jwtPayload(ex.json.id_token).sub, 'EMP-00001');
  ok(`code exchange: keys=${Object.keys(ex.json)} scope="${ex.json.scope}" at=${ex.json.access_token.length} rt=${ex.json.refresh_token.length} chars`);

  {
    const gx = await AG({ user_id: 'EMP-00001' }, `Bearer ${orgToken}`);
    const first = await T({ grant_type: 'authorization_code', code: gx.json.code, redirect_uri: REDIRECT }, { authorization: basic('basic-client', SECRET) });
    assert.equal(first.status, 200);
    const again = await T({ grant_type: 'authorization_code', code: gx.json.code, redirect_uri: REDIRECT }, { authorization: basic('basic-client', SECRET) });
    assert.equal(again.status, 400);
    assert.equal(again.json.error, 'invalid_grant');
    const dead = await T({ grant_type: 'refresh_token', refresh_token: first.json.refresh_token }, { authorization: basic('basic-client', SECRET) });
    assert.equal(dead.status, 400);
    ok(`code reuse -> ${JSON.stringify(again.json)}, and revokes the tokens issued from that code`);
  }

  const rt1 = ex.json.refresh_token;
  const r2 = await T({ grant_type: 'refresh_token', refresh_token: rt1 }, { authorization: basic('basic-client', SECRET) });
  assert.equal(r2.status, 200, r2.text);
  assert.ok(r2.json.refresh_token && r2.json.refresh_token !== rt1);
  ok(`refresh rotates: keys=${Object.keys(r2.json)}`);

  const reuse = await T({ grant_type: 'refresh_token', refresh_token: rt1 }, { authorization: basic('basic-client', SECRET) });
  assert.equal(reuse.status, 400);
  assert.deepEqual(reuse.json, { error: 'invalid_grant', error_description: 'grant request is invalid' });
  const after = await T({ grant_type: 'refresh_token', refresh_token: r2.json.refresh_token }, { authorization: basic('basic-client', SECRET) });
  assert.equal(after.status, 400);
  assert.equal(after.json.error, 'invalid_grant');
  const introspect = await request(issuer, 'POST', '/token/introspection', { form: { token: r2.json.access_token }, headers: { authorization: basic('basic-client', SECRET) } });
  assert.equal(introspect.json.active, false);
  ok(`reused refresh -> 400 ${JSON.stringify(reuse.json)}; the whole grant is revoked (rotated RT and ATs die too)`);

  // With a resource: the code exchange and refresh yield JWTs for that audience.
  const g2 = await AG({ user_id: 'EMP-00002' }, `Bearer ${orgToken}`);
  const ex2 = await T({ grant_type: 'authorization_code', code: g2.json.code, redirect_uri: REDIRECT, resource: RESOURCE, client_id: 'post-client', client_secret: SECRET });
  // post-client's secret with basic-client's code: client mismatch
  assert.equal(ex2.status, 400);
  assert.equal(ex2.json.error, 'invalid_grant');
  const g3 = await AG({ user_id: 'EMP-00002' }, `Bearer ${orgToken}`);
  const ex3 = await T({ grant_type: 'authorization_code', code: g3.json.code, redirect_uri: REDIRECT, resource: RESOURCE }, { authorization: basic('basic-client', SECRET) });
  assert.equal(ex3.status, 200, ex3.text);
  const p3 = jwtPayload(ex3.json.access_token);
  assert.equal(p3.aud, RESOURCE);
  assert.equal(p3.sub, 'EMP-00002');
  assert.equal(ex3.json.scope, scope);
  const rr = await T({ grant_type: 'refresh_token', refresh_token: ex3.json.refresh_token, resource: RESOURCE }, { authorization: basic('basic-client', SECRET) });
  assert.equal(rr.status, 200, rr.text);
  assert.equal(jwtPayload(rr.json.access_token).aud, RESOURCE);
  const rbad = await T({ grant_type: 'refresh_token', refresh_token: rr.json.refresh_token, resource: 'https://unknown.example.com' }, { authorization: basic('basic-client', SECRET) });
  assert.equal(rbad.status, 400);
  assert.equal(rbad.json.error, 'invalid_target');
  const noRedirect = await AG({ user_id: 'EMP-00002' }, `Bearer ${orgToken}`);
  const ex4 = await T({ grant_type: 'authorization_code', code: noRedirect.json.code }, { authorization: basic('basic-client', SECRET) });
  assert.equal(ex4.status, 200, ex4.text);
  ok(`resource on code exchange/refresh -> JWT aud=${p3.aud} sub=${p3.sub} scope="${ex3.json.scope}"; unknown resource on refresh -> ${JSON.stringify(rbad.json)}; redirect_uri may be omitted`);

  // private_key_jwt and public clients through the same flow.
  const jwtOrg = await T({ grant_type: 'client_credentials', client_assertion_type: JWT_BEARER, client_assertion: assertion({ claims: { aud: issuer } }) });
  const gj = await AG({ user_id: 'EMP-00001' }, `Bearer ${jwtOrg.json.access_token}`);
  const exj = await T({ grant_type: 'authorization_code', code: gj.json.code, redirect_uri: REDIRECT, client_assertion_type: JWT_BEARER, client_assertion: assertion({ claims: { aud: `${issuer}/token` } }) });
  assert.equal(exj.status, 200, exj.text);
  assert.ok(exj.json.refresh_token);
  const gp = await AG({ user_id: 'EMP-00001', client_id: 'public-client' }, `Bearer ${orgToken}`);
  const exp = await T({ grant_type: 'authorization_code', code: gp.json.code, redirect_uri: REDIRECT, client_id: 'public-client' });
  assert.equal(exp.status, 200, exp.text);
  const rp = await T({ grant_type: 'refresh_token', refresh_token: exp.json.refresh_token, client_id: 'public-client' });
  assert.equal(rp.status, 200, rp.text);
  ok('private_key_jwt and public client: code exchange + refresh');
}

{
  const s = await request(issuer, 'GET', '/_stats');
  assert.equal(s.status, 200);
  assert.equal(s.json.refresh_reused, 1); // rt1 presented again; the revoked rotated one is not a reuse
  ok(`stats ${JSON.stringify(s.json)}`);
}

// Exit when stdin closes.
{
  const t0 = Date.now();
  const exited = new Promise((r) => srv.child.once('exit', (code, sig) => r({ code, sig })));
  srv.child.stdin.end();
  const { code } = await exited;
  assert.equal(code, 0);
  ok(`exits with 0 ${Date.now() - t0} ms after stdin closes`);
  if (/error/i.test(srv.stderr())) console.log(`# stderr: ${srv.stderr()}`);
}

// ------------------------------------------------------------------ TLS
{
  const o = (...args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
  o('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'ca-key.pem', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=selfcheck CA');
  o('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'leaf-key.pem', '-out', 'leaf.csr', '-subj', '/CN=127.0.0.1');
  fs.writeFileSync(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  o('x509', '-req', '-in', 'leaf.csr', '-CA', 'ca.pem', '-CAkey', 'ca-key.pem', '-CAcreateserial', '-out', 'leaf.pem', '-days', '1', '-extfile', 'ext.cnf');
  const tls = await start(writeConfig('tls.json', { tls: { cert: path.join(dir, 'leaf.pem'), key: path.join(dir, 'leaf-key.pem') } }));
  assert.equal(tls.ready.issuer, `https://127.0.0.1:${tls.ready.port}`);
  const ca = fs.readFileSync(path.join(dir, 'ca.pem'));
  const d = await request(tls.ready.issuer, 'GET', '/.well-known/openid-configuration', { ca });
  assert.equal(d.json.token_endpoint, `${tls.ready.issuer}/token`);
  const r = await request(tls.ready.issuer, 'POST', '/token', { ca, form: { grant_type: 'client_credentials' }, headers: { authorization: basic('basic-client', SECRET) } });
  assert.equal(r.status, 200, r.text);
  await assert.rejects(request(tls.ready.issuer, 'GET', '/.well-known/openid-configuration'));
  const exited = new Promise((res) => tls.child.once('exit', (code, sig) => res({ code, sig })));
  tls.child.kill('SIGTERM');
  assert.equal((await exited).code, 0);
  ok(`TLS: ${tls.ready.issuer} (ready in ${tls.ms} ms) works with the CA, is refused without it; SIGTERM -> exit 0`);
}

fs.rmSync(dir, { recursive: true, force: true });
console.log(`all ${checks} checks passed`);
