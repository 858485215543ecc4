// A user token from tokenbroker with the Node client (clients/node), and a fetch that
// carries it. Run `npm install` in clients/node first (or set NODE_PATH to a
// node_modules with @grpc/grpc-js and @grpc/proto-loader), then from the repository root:
//   node examples/node/get_token.js     # BROKER=host:port (default 127.0.0.1:50051); SANDBOX=URL
// In a project: `npm install ./clients/node` and `require('tokenbroker')`.
'use strict';
const { TokenSource, withToken } = require('../../clients/node');

(async () => {
  // The org may be left out when the broker has one (`tokenbroker demo`: "demo").
  const src = new TokenSource(process.env.BROKER || '127.0.0.1:50051', { userId: 'EMP-00001' });
  try {
    const token = await src.token(); // the current token; the source follows every new one
    console.log(`user token for EMP-00001: Bearer ${token.slice(0, 8)}...`);
    const fetchAuthed = withToken(src); // Authorization: Bearer <token>; 401 -> Refresh -> retry once
    if (process.env.SANDBOX) {
      const me = await (await fetchAuthed(`${process.env.SANDBOX}/api/v1/expense/me`)).json();
      console.log(`the platform sees ${me.externalSourceId} (${me.name})`);
    }
  } finally {
    src.close();
  }
})().catch((error) => {
  console.error(`failed: ${error.code ?? ''} ${error.message}`);
  process.exit(1);
});
