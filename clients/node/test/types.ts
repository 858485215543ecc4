// Types test (compiled by `tsc --noEmit` in check.sh, never run): the public API as a
// CommonJS TypeScript user sees it, through require-style and import-style loading of the
// package by its own name. Each `@ts-expect-error` proves a misuse is rejected.
import tokenbroker = require('tokenbroker');
import { Connection, TokenError, TokenSource, withToken, type TokenInfo } from 'tokenbroker';

export async function requireStyle(): Promise<void> {
  const src = new tokenbroker.TokenSource('127.0.0.1:50051', { org: 'acme', userId: 'EMP-00001', apiKey: undefined });
  const token: string = await src.token();
  const withTimeout: string = await src.token({ timeoutMs: 2000 });
  const fresh: string = await src.refresh(token);
  const fetchAuthed: typeof fetch = tokenbroker.withToken(src);
  const response: Response = await fetchAuthed('https://example.invalid/', { method: 'GET' });
  console.log(withTimeout, fresh, response.status);
  src.close();
}

export async function importStyle(): Promise<void> {
  const conn = new Connection('unix:///run/tokenbroker.sock', {
    apiKey: 'key',
    rootCerts: Buffer.from('ca'),
    certChain: Buffer.from('cert'),
    privateKey: Buffer.from('key'),
  });
  const org = new TokenSource(conn, { org: 'acme' });
  const user = new TokenSource(conn, { org: 'acme', userId: 'EMP-00002' });
  // @ts-expect-error credentials belong to the Connection
  new TokenSource(conn, { apiKey: 'key' });
  // @ts-expect-error a target or a Connection
  new TokenSource(42);
  user.on('token', (info: TokenInfo, reason) => {
    const expires: Date | null = info.expiresAt;
    const generation: number = info.generation;
    const expired: boolean = info.isExpired(Date.now());
    const r: 'INITIAL' | 'ISSUED' | 'RENEWED' | 'FORCED' | 'REISSUED' | 'FETCHED' | 'REFRESHED' = reason;
    console.log(expires, generation, expired, r);
  });
  try {
    await org.token();
  } catch (error) {
    if (error instanceof TokenError) {
      const code: string = error.code;
      const message: string = error.message;
      console.log(code, message);
    }
  }
  // A custom fetch keeps its own signature.
  const custom = async (url: string, init?: { headers?: Headers }) => ({ status: 200, url, init });
  const wrapped = withToken(user, custom);
  const answer: { status: number; url: string } = await wrapped('https://example.invalid/');
  console.log(answer.url, conn.target, conn.closed);
  // @ts-expect-error withToken needs a source with token() and refresh()
  withToken({ token: async () => 'x' });
  org.close();
  user.close();
  conn.close();
}

export async function dynamicImport(): Promise<void> {
  // import() from CommonJS resolves the package's "import" condition (index.d.mts).
  const esm = await import('tokenbroker');
  const src: InstanceType<typeof esm.TokenSource> = new esm.TokenSource('127.0.0.1:50051', { userId: 'EMP-00001' });
  const same: TokenSource = src;
  const error: InstanceType<typeof esm.TokenError> = new esm.TokenError('NOT_FOUND', 'no such user');
  console.log(await same.token(), error.code, esm.withToken(src), esm.Connection);
}
