// Types test (compiled by `tsc --noEmit` in check.sh, never run): the public API from an
// ES module, which resolves the package's "import" condition (index.d.mts).
import { Connection, TokenError, TokenSource, withToken, type TokenInfo } from 'tokenbroker';

export async function esmStyle(): Promise<number> {
  const conn = new Connection('127.0.0.1:50051', { apiKey: 'key' });
  const src = new TokenSource(conn, { org: 'acme', userId: 'EMP-00001' });
  src.once('token', (info: TokenInfo) => console.log(info.generation));
  const token: string = await src.token({ timeoutMs: 500 });
  const fresh: string = await src.refresh(token, { timeoutMs: 500 });
  const response = await withToken(src, fetch)(new URL('https://example.invalid/'), { method: 'POST', body: fresh });
  const error: TokenError = new TokenError('REVOKED', 'user removed');
  src.close();
  conn.close();
  return response.status + error.code.length;
}
