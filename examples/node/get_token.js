// Get an org token and a user token from tokenbroker, and watch the org token.
// npm install @grpc/grpc-js @grpc/proto-loader; run from the repository root:
//   node examples/node/get_token.js
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const definition = loader.loadSync('tokenbroker/v1/token_service.proto', {
  includeDirs: ['proto'], keepCase: true, longs: String, enums: String, defaults: true,
});
const { TokenService } = grpc.loadPackageDefinition(definition).tokenbroker.v1;
const broker = new TokenService(process.env.BROKER || '127.0.0.1:50051', grpc.credentials.createInsecure());
// With callers configured, pass metadata: const md = new grpc.Metadata(); md.set('authorization', `Bearer ${key}`);

broker.GetOrgToken({}, (err, answer) => {
  if (err) throw err;
  console.log(`org token for ${answer.token.org}, generation ${answer.token.generation}`);
  broker.GetUserToken({ user_id: 'EMP-00001' }, (err, answer) => {
    if (err) throw err;
    console.log(`user token for ${answer.token.user_id}: Bearer ${answer.token.access_token.slice(0, 8)}...`);
    // The current token at once, then every new one: keep the newest and use it.
    const stream = broker.WatchTokens({});
    stream.on('data', (m) => {
      console.log(`${m.reason}: generation ${m.token.generation}`);
      stream.cancel();
    });
    stream.on('error', () => process.exit(0));
  });
});
