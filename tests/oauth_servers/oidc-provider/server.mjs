// Test harness: a real oidc-provider (OpenID-certified) authorization server for
// tokenbroker's integration tests, plus two test-only endpoints
// (`POST /authorization-grant`, `GET /_stats`). See README.md.
//
//   node server.mjs CONFIG.json
//
// Prints one JSON line `{"issuer":"http://127.0.0.1:PORT","port":PORT}` on stdout when
// ready. Exits on SIGTERM/SIGINT and when stdin closes (set OIDC_HARNESS_KEEP_STDIN=1 to
// ignore stdin, e.g. when running it by hand with `< /dev/null`).

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors as oidcErrors } from 'oidc-provider';

const REDIRECT_URI = 'http://127.0.0.1/callback';

function fail(message) {
  process.stderr.write(`oidc-provider harness: ${message}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- configuration

if (!process.argv[2]) fail('usage: node server.mjs CONFIG.json');
let config;
try {
  config = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
} catch (err) {
  fail(`cannot read config ${process.argv[2]}: ${err.message}`);
}

const tokenLifetime = Number(config.token_lifetime ?? 3600);
const refreshLifetime = Number(config.refresh_token_lifetime ?? 14 * 24 * 3600);
const codeLifetime = Number(config.code_lifetime ?? 60);
if (!(tokenLifetime > 0) || !(refreshLifetime > 0) || !(codeLifetime > 0)) {
  fail('token_lifetime, refresh_token_lifetime and code_lifetime must be positive');
}
const users = new Set((config.users ?? []).map(String));
const resources = new Map(Object.entries(config.resources ?? {}));
const splitScope = (s) => (typeof s === 'string' ? s.split(' ').filter(Boolean) : []);

const clients = (config.clients ?? []).map((c) => {
  if (!c.client_id) fail('every client needs a client_id');
  const authMethod = c.auth_method ?? 'client_secret_basic';
  const grantTypes = c.grant_types ?? ['client_credentials'];
  const hasCode = grantTypes.includes('authorization_code');
  const meta = {
    client_id: c.client_id,
    token_endpoint_auth_method: authMethod,
    grant_types: grantTypes,
    response_types: hasCode ? ['code'] : [],
    redirect_uris: hasCode ? [REDIRECT_URI] : [],
    ...(c.scope ? { scope: c.scope } : {}),
    ...(c.client_secret ? { client_secret: c.client_secret } : {}),
    ...(c.jwks ? { jwks: c.jwks } : {}),
    ...(c.metadata ?? {}), // any other client metadata, passed through verbatim
  };
  return meta;
});

// Every scope a client or resource server names is a "static" scope of the provider;
// oidc-provider silently drops scopes it does not know (see README).
const scopes = new Set(['openid', 'offline_access']);
for (const c of config.clients ?? []) splitScope(c.scope).forEach((s) => scopes.add(s));
for (const r of resources.values()) splitScope(r.scope).forEach((s) => scopes.add(s));

// The provider's own signing key (ID tokens, JWT access tokens), fresh every run.
const { privateKey: signingKey, publicKey: verifyKey } = crypto.generateKeyPairSync('ec', {
  namedCurve: 'P-256',
});
const signingJwk = {
  ...signingKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  alg: 'ES256',
  use: 'sig',
};

// ---------------------------------------------------------------- stats

const stats = {
  token_requests: 0,
  by_grant: {},
  refresh_reused: 0,
  errors: {},
  authorization_grant_requests: 0,
  authorization_grant_errors: {},
};
const sha = (v) => crypto.createHash('sha256').update(String(v)).digest('base64url');
const spentRefreshTokens = new Set(); // hashes of refresh tokens already used once
const bump = (map, key) => { map[key] = (map[key] ?? 0) + 1; };

// ---------------------------------------------------------------- HTTP server

let handler = (_req, res) => { res.statusCode = 503; res.end(); };
const tls = config.tls ?? null;
const server = tls
  ? https.createServer(
    { cert: fs.readFileSync(tls.cert), key: fs.readFileSync(tls.key) },
    (req, res) => handler(req, res),
  )
  : http.createServer((req, res) => handler(req, res));

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(0, '127.0.0.1', resolve);
});
const { port } = server.address();
const issuer = `${tls ? 'https' : 'http'}://127.0.0.1:${port}`;

// ---------------------------------------------------------------- provider

const provider = new Provider(issuer, {
  clients,
  clientAuthMethods: [
    'client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt', 'none',
  ],
  clientDefaults: {
    grant_types: ['client_credentials'],
    response_types: [],
    id_token_signed_response_alg: 'ES256',
    token_endpoint_auth_method: 'client_secret_basic',
  },
  jwks: { keys: [signingJwk] },
  scopes: [...scopes],
  claims: { openid: ['sub'] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  findAccount: async (_ctx, id) => (users.has(id)
    ? { accountId: id, claims: async () => ({ sub: id }) }
    : undefined),
  features: {
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    devInteractions: { enabled: false },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf, // no default resource
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, identifier, client) => {
        const rs = resources.get(identifier);
        if (!rs) throw new oidcErrors.InvalidTarget();
        const allowed = new Set(splitScope(client.scope));
        return {
          scope: splitScope(rs.scope).filter((s) => allowed.size === 0 || allowed.has(s)).join(' '),
          accessTokenTTL: Number(rs.token_lifetime ?? tokenLifetime),
          accessTokenFormat: rs.access_token_format ?? 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
  interactions: { url: async () => '/interaction/unsupported' },
  rotateRefreshToken: true,
  issueRefreshToken: async (_ctx, client, code) => (
    client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access')
  ),
  ttl: {
    AccessToken: () => tokenLifetime,
    ClientCredentials: () => tokenLifetime,
    AuthorizationCode: () => codeLifetime,
    RefreshToken: () => refreshLifetime,
    Grant: () => refreshLifetime,
    IdToken: () => tokenLifetime,
    Interaction: () => 600,
    Session: () => refreshLifetime,
  },
  renderError: async (ctx, out) => { ctx.type = 'json'; ctx.body = out; },
});
provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

// Count every POST to the token endpoint, after oidc-provider has parsed and answered it.
provider.use(async (ctx, next) => {
  const isToken = ctx.method === 'POST' && ctx.path === '/token';
  let presented;
  try {
    await next();
  } finally {
    if (isToken) {
      const params = ctx.oidc?.params ?? {};
      const grantType = typeof params.grant_type === 'string' ? params.grant_type : '(none)';
      stats.token_requests += 1;
      bump(stats.by_grant, grantType);
      if (grantType === 'refresh_token' && typeof params.refresh_token === 'string') {
        presented = sha(params.refresh_token);
        if (spentRefreshTokens.has(presented)) stats.refresh_reused += 1;
      }
      if (ctx.status >= 400) {
        bump(stats.errors, ctx.body?.error ?? String(ctx.status));
      } else if (presented) {
        spentRefreshTokens.add(presented);
      }
    }
  }
});

// ---------------------------------------------------------------- test endpoints

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 64 * 1024) throw new Error('body too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

// The org's access token: an opaque ClientCredentials token of this provider, or a JWT
// access token of this provider (client credentials with a resource indicator).
async function orgClientFor(bearer) {
  if (bearer.split('.').length === 3) {
    const [h, p, s] = bearer.split('.');
    let header;
    let payload;
    try {
      header = JSON.parse(Buffer.from(h, 'base64url'));
      payload = JSON.parse(Buffer.from(p, 'base64url'));
    } catch {
      return undefined;
    }
    if (header.alg !== 'ES256' || header.kid !== signingJwk.kid || header.typ !== 'at+jwt') return undefined;
    const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), { key: verifyKey, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
    if (!ok || payload.iss !== issuer || !(payload.exp > Date.now() / 1000)) return undefined;
    // Client credentials tokens have the client as subject; user tokens have the account.
    if (payload.sub !== payload.client_id) return undefined;
    return provider.Client.find(payload.client_id);
  }
  const token = await provider.ClientCredentials.find(bearer);
  if (!token || token.isExpired) return undefined;
  return provider.Client.find(token.clientId);
}

async function authorizationGrant(req, res) {
  stats.authorization_grant_requests += 1;
  const reply = (status, body) => {
    if (body.error) bump(stats.authorization_grant_errors, body.error);
    sendJson(res, status, body);
  };
  const m = /^Bearer ([^\s]+)$/i.exec(req.headers.authorization ?? '');
  let client = m ? await orgClientFor(m[1]) : undefined;
  if (!client) {
    res.setHeader('www-authenticate', 'Bearer error="invalid_token"');
    return reply(401, { error: 'invalid_token' });
  }
  if (!(req.headers['content-type'] ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded')) {
    return reply(400, { error: 'invalid_request', error_description: 'expected application/x-www-form-urlencoded' });
  }
  const form = await readForm(req);
  const userId = form.get('user_id');
  if (!userId) return reply(400, { error: 'invalid_request', error_description: 'user_id is required' });
  if (!users.has(userId)) return reply(404, { error: 'unknown_user' });
  // Test-only extension: `client_id=...` asks for a code for another registered client
  // (e.g. a public client, which cannot get a client-credentials token of its own).
  const forId = form.get('client_id');
  if (forId && forId !== client.clientId) {
    client = await provider.Client.find(forId);
    if (!client) return reply(400, { error: 'invalid_request', error_description: 'unknown client_id' });
  }
  if (!client.grantTypeAllowed('authorization_code')) {
    return reply(400, { error: 'unauthorized_client', error_description: 'client may not use authorization_code' });
  }

  const clientScopes = splitScope(client.scope);
  const scope = [...new Set(['openid', 'offline_access', ...clientScopes])].join(' ');
  const grant = new provider.Grant({ accountId: userId, clientId: client.clientId });
  grant.addOIDCScope(scope);
  const granted = [];
  for (const [identifier, rs] of resources) {
    const rsScopes = splitScope(rs.scope).filter((s) => clientScopes.length === 0 || clientScopes.includes(s));
    grant.addResourceScope(identifier, rsScopes.join(' '));
    granted.push(identifier);
  }
  const grantId = await grant.save();

  const code = new provider.AuthorizationCode({
    accountId: userId,
    client,
    grantId,
    scope,
    redirectUri: REDIRECT_URI,
    authTime: Math.floor(Date.now() / 1000),
    ...(granted.length ? { resource: granted.length === 1 ? granted[0] : granted } : {}),
  });
  return reply(200, { code: await code.save() });
}

const providerCallback = provider.callback();
handler = (req, res) => {
  const path = (req.url ?? '').split('?')[0];
  if (path === '/_stats' && req.method === 'GET') return sendJson(res, 200, stats);
  if (path === '/authorization-grant') {
    if (req.method !== 'POST') return sendJson(res, 405, { error: 'invalid_request' });
    return authorizationGrant(req, res).catch((err) => {
      process.stderr.write(`authorization-grant: ${err.stack}\n`);
      if (!res.headersSent) sendJson(res, 500, { error: 'server_error' });
    });
  }
  return providerCallback(req, res);
};

// ---------------------------------------------------------------- lifecycle

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdout.on('error', stop); // reader gone (EPIPE)
if (!process.env.OIDC_HARNESS_KEEP_STDIN) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.on('error', stop);
  process.stdin.resume(); // discard anything written; we only care about EOF
}

// oidc-provider validates static clients lazily; do it now so a bad config fails loudly.
for (const { client_id: id } of clients) {
  try {
    await provider.Client.find(id);
  } catch (err) {
    fail(`client ${id}: ${err.error_description ?? err.message}`);
  }
}

process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
