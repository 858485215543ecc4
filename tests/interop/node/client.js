// tokenbroker from Node (@grpc/grpc-js + @grpc/proto-loader): every RPC against a broker in
// front of the sandbox, each answer checked. Env: BROKER (host:port), SANDBOX (URL).
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const definition = loader.loadSync('tokenbroker/v1/token_service.proto', {
  includeDirs: [path.join(__dirname, '..', '..', '..', 'proto')],
  keepCase: true, longs: String, enums: String, defaults: true,
});
const { TokenService } = grpc.loadPackageDefinition(definition).tokenbroker.v1;
const client = new TokenService(process.env.BROKER, grpc.credentials.createInsecure());
const deadline = () => ({ deadline: Date.now() + 10000 });
const call = (method, request) => new Promise((resolve, reject) =>
  client[method](request, deadline(), (err, answer) => (err ? reject(err) : resolve(answer))));
const check = (condition, what) => { if (!condition) { console.error(`node: FAILED: ${what}`); process.exit(1); } };
const platform = async (route, token) =>
  (await fetch(process.env.SANDBOX + route, { headers: { Authorization: `Bearer ${token}` } })).json();

(async () => {
  const org = (await call('GetOrgToken', {})).token;
  check(org.org === 'demo' && org.access_token && Number(org.generation) >= 1, `GetOrgToken ${JSON.stringify(org)}`);
  check((await platform('/api/v1/admin/organization', org.access_token)).organization === 'demo', 'org token accepted');

  const user = (await call('GetUserToken', { user_id: 'EMP-00004' })).token;
  check(user.user_id === 'EMP-00004', `GetUserToken ${JSON.stringify(user)}`);
  check((await platform('/api/v1/expense/me', user.access_token)).externalSourceId === 'EMP-00004', 'user token acts as the user');

  const stream = client.WatchTokens({ user_ids: ['EMP-00005'] });
  const messages = [];
  const next = () => new Promise((resolve) => {
    if (messages.length) return resolve(messages.shift());
    stream.once('data', () => resolve(messages.shift()));
  });
  stream.on('data', (m) => messages.push(m));
  stream.on('error', () => {});
  const first = await next();
  check(first.reason === 'TOKEN_EVENT_REASON_INITIAL' && first.user_id === 'EMP-00005', `initial ${JSON.stringify(first)}`);
  const fresh = (await call('Refresh', { user_id: 'EMP-00005', stale_access_token: first.token.access_token })).token;
  check(Number(fresh.generation) === Number(first.token.generation) + 1, `Refresh ${JSON.stringify(fresh)}`);
  const pushed = await next();
  check(pushed.reason === 'TOKEN_EVENT_REASON_FORCED' && pushed.token.access_token === fresh.access_token, `pushed ${JSON.stringify(pushed)}`);
  stream.cancel();

  const err = await call('GetUserToken', { user_id: 'no-such-user' }).then(() => null, (e) => e);
  check(err && err.code === grpc.status.NOT_FOUND, `unknown user: ${err && err.code}`);
  console.log('node: 4 passed, 0 failed');
  process.exit(0);
})().catch((e) => { console.error(`node: FAILED: ${e.stack}`); process.exit(1); });
