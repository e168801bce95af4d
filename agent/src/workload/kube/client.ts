// A minimal Kubernetes API client: raw JSON GET, line-by-line watch streams and merge patches over one node:https pool,
// each request bounded (caller's signal, a wait for the response, a wait per gap in the body). Credentials: credentials.ts.
import { constants } from 'node:buffer';
import { type KubeAccess, type KubeCredentials, loadKubeAccess } from './credentials.js';
import { KubeApiError } from './errors.js';
import type { KubeHttpResponse } from './http-transport.js';
import { LineSplitter } from '../../protocol/line-splitter.js';
import { JsonListSplitter } from './list-splitter.js';

export { KubeApiError } from './errors.js';
export { type KubeAccess, type KubeCredentials, loadKubeAccess, SERVICE_ACCOUNT_DIR } from './credentials.js';

export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

type Query = Record<string, string | undefined>;

/** How long a request may wait; the defaults are undici's, which served these requests before. */
export interface KubeClientBounds {
  /** From sending the request to its response headers. */
  responseTimeoutMs: number;
  /** Between two chunks of a body (a watch: at least its server-side `timeoutSeconds` plus a minute). */
  bodyIdleTimeoutMs: number;
  /** The longest watch event line; a longer one fails the watch (the server's objects are at most a few MB). */
  maxWatchLineChars: number;
  /**
   * The largest response body (a list, decompressed): past it the request fails with a KubeApiError naming the bound.
   * At most MAX_BODY_BYTES_LIMIT (V8's longest string, buffer.constants.MAX_STRING_LENGTH, is just under 512 MiB: a
   * body read whole is one string); the default 256 MiB leaves room below it, and a 50,000-pod list is well under it.
   */
  maxBodyBytes: number;
}

export const DEFAULT_KUBE_CLIENT_BOUNDS: KubeClientBounds = {
  responseTimeoutMs: 300_000,
  bodyIdleTimeoutMs: 300_000,
  maxWatchLineChars: 16 * 1024 * 1024,
  maxBodyBytes: 256 * 1024 * 1024,
};

/** The largest maxBodyBytes accepted: a body read whole must fit in one string (UTF-8 has at least one byte a character). */
export const MAX_BODY_BYTES_LIMIT = constants.MAX_STRING_LENGTH;

/** The error of a body past the bound: names the bound, so an operator knows which limit a huge list hit. */
function oversized(what: string, maxBytes: number): KubeApiError {
  return new KubeApiError(`${what}: the response is over ${maxBytes} bytes (the client's maxBodyBytes bound): refused rather than read whole`);
}

export class KubeClient {
  private access: Promise<KubeAccess> | undefined;
  private serverUrl = '';
  private readonly bounds: KubeClientBounds;

  constructor(private readonly creds: KubeCredentials, bounds: Partial<KubeClientBounds> = {}) {
    this.bounds = { ...DEFAULT_KUBE_CLIENT_BOUNDS, ...bounds };
    const max = this.bounds.maxBodyBytes;
    if (!Number.isSafeInteger(max) || max < 1 || max > MAX_BODY_BYTES_LIMIT) {
      throw new RangeError(`maxBodyBytes must be an integer from 1 to ${MAX_BODY_BYTES_LIMIT} (V8's longest string), got ${max}`);
    }
  }

  /** Loads the credentials; MUST succeed before anything else works (a bad kubeconfig or missing token fails here). */
  async init(): Promise<void> {
    this.access ??= loadKubeAccess(this.creds).then((access) => {
      this.serverUrl = access.server;
      return access;
    });
    await this.access;
  }

  get server(): string {
    return this.serverUrl;
  }

  async close(): Promise<void> {
    const access = await this.access?.catch(() => undefined);
    await access?.close();
  }

  /** GET path and parse the JSON body; a non-2xx status is a KubeApiError carrying it. */
  async getJson(path: string, query: Query, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const { status, text } = await this.exchange('GET', path, query, { signal });
    if (status < 200 || status > 299) throw new KubeApiError(`GET ${path}: HTTP ${status}: ${statusMessage(text)}`, status);
    return parseObject(text, `GET ${path}`);
  }

  /**
   * GET a list and hand its items to `onItem` one by one as the body arrives (never the whole list parsed at once: a
   * cluster's pods would be one tree of hundreds of MB); resolves with the rest of the body (kind, metadata, empty items).
   * A non-2xx status is a KubeApiError carrying it, before any item.
   */
  async getList(path: string, query: Query, signal: AbortSignal | undefined, onItem: (item: Record<string, unknown>) => void): Promise<Record<string, unknown>> {
    const request = await this.open('GET', path, query, { signal, watch: false, bodyIdleTimeoutMs: this.bounds.bodyIdleTimeoutMs });
    try {
      if (request.res.status < 200 || request.res.status > 299) {
        const text = await request.text(this.bounds.maxBodyBytes);
        throw new KubeApiError(`GET ${path}: HTTP ${request.res.status}: ${statusMessage(text)}`, request.res.status);
      }
      const splitter = new JsonListSplitter();
      const decoder = new TextDecoder();
      let bytes = 0;
      const what = `GET ${path}`;
      const take = (text: string): void => {
        for (const item of splitter.push(text)) {
          let v: unknown;
          try {
            v = JSON.parse(item);
          } catch (err) {
            throw new KubeApiError(`${what}: an item of the list is not JSON`, undefined, { cause: err });
          }
          if (typeof v === 'object' && v !== null && !Array.isArray(v)) onItem(v as Record<string, unknown>);
        }
      };
      for await (const chunk of request.chunks()) {
        bytes += chunk.length;
        if (bytes > this.bounds.maxBodyBytes) throw oversized(what, this.bounds.maxBodyBytes);
        take(decoder.decode(chunk, { stream: true }));
      }
      take(decoder.decode());
      return parseObject(splitter.rest(), what);
    } finally {
      request.finish();
    }
  }

  /** PATCH path with a JSON merge patch. */
  async mergePatch(path: string, patch: unknown, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const { status, text } = await this.exchange('PATCH', path, {}, { signal, body: JSON.stringify(patch), contentType: 'application/merge-patch+json' });
    if (status < 200 || status > 299) throw new KubeApiError(`PATCH ${path}: HTTP ${status}: ${statusMessage(text)}`, status);
    return parseObject(text, `PATCH ${path}`);
  }

  /**
   * Opens a watch and yields its events until the server ends the stream or signal aborts. An HTTP error status
   * (410 Gone included) is thrown as a KubeApiError before the first event. Leaving the loop early, an error or an
   * abort closes the connection (a half-read watch is never returned to the pool).
   */
  async *watch(path: string, query: Query, signal: AbortSignal): AsyncGenerator<WatchEvent> {
    const serverTimeoutS = Number(query.timeoutSeconds);
    const idleMs = Number.isFinite(serverTimeoutS) ? Math.max(this.bounds.bodyIdleTimeoutMs, (serverTimeoutS + 60) * 1000) : this.bounds.bodyIdleTimeoutMs;
    const request = await this.open('GET', path, { ...query, watch: 'true' }, { signal, watch: true, bodyIdleTimeoutMs: idleMs });
    try {
      if (request.res.status !== 200) {
        const text = await request.text(64 * 1024).catch(() => '');
        throw new KubeApiError(`watch ${path}: HTTP ${request.res.status}: ${statusMessage(text)}`, request.res.status);
      }
      // An event too long to take is not skipped (the directory would miss it): the watch fails, and the reflector
      // resumes from the last event it applied.
      const lines = new LineSplitter(this.bounds.maxWatchLineChars, undefined, 'stop');
      const decoder = new TextDecoder();
      for await (const chunk of request.chunks()) {
        for (const raw of lines.push(decoder.decode(chunk, { stream: true }))) {
          const line = raw.trim();
          if (line) yield parseWatchEvent(line, path);
        }
        if (lines.stopped) throw new KubeApiError(`watch ${path}: an event is over ${this.bounds.maxWatchLineChars} characters`);
      }
    } finally {
      request.finish();
    }
  }

  /** One request read to its end: status and body text. */
  private async exchange(method: 'GET' | 'PATCH', path: string, query: Query, opts: { signal?: AbortSignal | undefined; body?: string; contentType?: string }): Promise<{ status: number; text: string }> {
    const request = await this.open(method, path, query, { ...opts, watch: false, bodyIdleTimeoutMs: this.bounds.bodyIdleTimeoutMs });
    try {
      return { status: request.res.status, text: await request.text(this.bounds.maxBodyBytes) };
    } finally {
      request.finish();
    }
  }

  private async open(method: 'GET' | 'PATCH', path: string, query: Query, opts: { signal?: AbortSignal | undefined; body?: string; contentType?: string; watch: boolean; bodyIdleTimeoutMs: number }): Promise<OpenRequest> {
    await this.init();
    const access = await (this.access as Promise<KubeAccess>);
    const url = new URL(this.server.replace(/\/$/, '') + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, v);
    const headers: Record<string, string> = { ...(await access.headers(url, method)), accept: 'application/json' };
    if (opts.contentType) headers['content-type'] = opts.contentType;
    const what = `${method} ${url.origin}${path}`;
    const bounds = new RequestBounds(opts.signal, what);
    bounds.arm(this.bounds.responseTimeoutMs, 'no response');
    let res: KubeHttpResponse;
    try {
      res = await access.send({ method, url, headers, ...(opts.body !== undefined ? { body: opts.body } : {}), compressed: !opts.watch, signal: bounds.signal });
    } catch (err) {
      bounds.done();
      throw bounds.failure(err, `${what} failed (is the API server reachable?)`);
    }
    return new OpenRequest(res, bounds, opts.bodyIdleTimeoutMs, what);
  }
}

/**
 * One request's bounds: the caller's signal, then a timer (the wait for the response, then each gap in the body). Either
 * aborts `signal`, which the transport turns into a closed connection.
 */
class RequestBounds {
  private readonly controller = new AbortController();
  private timer: NodeJS.Timeout | undefined;
  private timedOut: KubeApiError | undefined;

  constructor(private readonly callerSignal: AbortSignal | undefined, private readonly what: string) {
    if (callerSignal?.aborted) this.controller.abort(callerSignal.reason);
    else callerSignal?.addEventListener('abort', this.onCallerAbort, { once: true });
  }

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  /** (Re)starts the timer: `waitingFor` names what did not come in time. */
  arm(ms: number, waitingFor: string): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timedOut = new KubeApiError(`${this.what}: ${waitingFor} in ${ms / 1000} s`);
      this.controller.abort(this.timedOut);
    }, ms);
    this.timer.unref();
  }

  done(): void {
    clearTimeout(this.timer);
    this.callerSignal?.removeEventListener('abort', this.onCallerAbort);
  }

  /** The error to throw for `err`: as it is when the caller aborted, the timeout's, or a KubeApiError wrapping it. */
  failure(err: unknown, message: string): unknown {
    if (this.callerSignal?.aborted) return err;
    if (this.timedOut) return this.timedOut;
    if (err instanceof KubeApiError) return err;
    return new KubeApiError(message, undefined, { cause: err });
  }

  private readonly onCallerAbort = (): void => this.controller.abort(this.callerSignal?.reason);
}

/** A response being read: its body in chunks under the idle bound, then `finish` (always) frees the bounds and the connection. */
class OpenRequest {
  constructor(readonly res: KubeHttpResponse, private readonly bounds: RequestBounds, private readonly idleMs: number, private readonly what: string) {}

  async *chunks(): AsyncGenerator<Uint8Array> {
    this.bounds.arm(this.idleMs, 'no data');
    try {
      for await (const chunk of this.res.body) {
        this.bounds.arm(this.idleMs, 'no data');
        yield chunk;
      }
    } catch (err) {
      throw this.bounds.failure(err, `${this.what}: the response broke off`);
    }
    // A body that ends because the signal fired (rather than with an error) is not a complete one.
    if (this.bounds.signal.aborted) throw this.bounds.failure(this.bounds.signal.reason, `${this.what}: the response broke off`);
  }

  /** The whole body as text, decompressed bytes bounded by `maxBytes` (a gzip bomb or a runaway list fails here). */
  async text(maxBytes: number): Promise<string> {
    const parts: Uint8Array[] = [];
    let bytes = 0;
    for await (const chunk of this.chunks()) {
      bytes += chunk.length;
      if (bytes > maxBytes) throw oversized(this.what, maxBytes);
      parts.push(chunk);
    }
    return Buffer.concat(parts).toString('utf8');
  }

  finish(): void {
    this.bounds.done();
    this.res.discard();
  }
}

function parseObject(text: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (err) {
    throw new KubeApiError(`${what}: the response is not JSON`, undefined, { cause: err });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new KubeApiError(`${what}: the response is not an object`);
  return v as Record<string, unknown>;
}

const WATCH_TYPES = new Set(['ADDED', 'MODIFIED', 'DELETED', 'BOOKMARK', 'ERROR']);

/** Pure: one line of a watch stream. */
export function parseWatchEvent(line: string, path = 'watch'): WatchEvent {
  const v = parseObject(line, `watch ${path}`);
  if (typeof v.type !== 'string' || !WATCH_TYPES.has(v.type)) throw new KubeApiError(`watch ${path}: unknown event type ${JSON.stringify(v.type)}`);
  if (typeof v.object !== 'object' || v.object === null) throw new KubeApiError(`watch ${path}: ${v.type} event without an object`);
  return { type: v.type as WatchEvent['type'], object: v.object as Record<string, unknown> };
}

/** The message of a Kubernetes Status body, or the text itself. */
function statusMessage(text: string): string {
  try {
    const v = JSON.parse(text) as { message?: unknown };
    if (typeof v.message === 'string') return v.message;
  } catch {
    // not a Status
  }
  return text.slice(0, 200);
}
