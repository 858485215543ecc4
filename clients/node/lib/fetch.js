// withToken: wraps fetch so every request carries the source's token, and a 401 costs one
// Refresh and one retry (when the request's body can be sent again), as clients/README.md
// asks of every client's HTTP helper.
'use strict';

/**
 * Whether `body` can be sent twice: fetch reads it anew each time (none, text, bytes,
 * URLSearchParams, Blob, FormData); a stream or an async iterable is spent by the first.
 * @param {unknown} body
 * @returns {boolean}
 */
function isReplayableBody(body) {
  return (
    body === undefined ||
    body === null ||
    typeof body === 'string' ||
    body instanceof ArrayBuffer ||
    ArrayBuffer.isView(body) ||
    body instanceof URLSearchParams ||
    (typeof Blob !== 'undefined' && body instanceof Blob) ||
    (typeof FormData !== 'undefined' && body instanceof FormData)
  );
}

/** Whether `input` is a Request (of any fetch implementation) rather than a URL. */
function isRequest(input) {
  return typeof input === 'object' && input !== null && !(input instanceof URL) && 'headers' in input;
}

/**
 * Whether the request fetch(input, init) sends can be sent again: its body is replayable,
 * and it is not a Request's own body (the first send consumes that).
 * @param {unknown} input
 * @param {RequestInit | undefined} init
 * @returns {boolean}
 */
function isReplayable(input, init) {
  if (init && init.body !== undefined) return isReplayableBody(init.body);
  return !(isRequest(input) && input.body != null);
}

/**
 * `init` with `authorization: Bearer <token>` over the headers the request already has.
 * init.headers replaces a Request's headers in fetch, so they start from the Request's.
 */
function withBearer(input, init, token) {
  const base = init?.headers ?? (isRequest(input) ? input.headers : undefined);
  const headers = new Headers(base);
  headers.set('authorization', `Bearer ${token}`);
  return { ...init, headers };
}

/**
 * A fetch that sends `authorization: Bearer <token>` with `source`'s current token. On a
 * 401 it calls `source.refresh(token)` and sends the request once more, when its body can
 * be sent again (not a ReadableStream, not a Request with a body); a second 401, or a
 * 401 for a request that cannot be replayed, is returned as it is.
 * @param {{ token(): Promise<string>, refresh(stale: string): Promise<string> }} source
 * @param {typeof fetch} [fetchImpl] globalThis.fetch by default
 * @returns {(input: string | URL | Request, init?: RequestInit) => Promise<Response>}
 * @throws {TokenError} (from the returned function) when no token can be had
 */
function withToken(source, fetchImpl = globalThis.fetch) {
  if (typeof fetchImpl !== 'function') throw new TypeError('withToken needs a fetch function');
  return async function fetchWithToken(input, init) {
    const token = await source.token();
    const response = await fetchImpl(input, withBearer(input, init, token));
    if (response.status !== 401 || !isReplayable(input, init)) return response;
    const fresh = await source.refresh(token);
    // The 401's body is not needed: release its connection before the retry.
    if (typeof response.body?.cancel === 'function') await response.body.cancel().catch(() => {});
    return fetchImpl(input, withBearer(input, init, fresh));
  };
}

module.exports = { withToken, isReplayable, isReplayableBody };
