// A minimal Kubernetes API client: raw JSON GET, line-by-line watch streams and merge patches over one undici pool.
// Credentials (kubeconfig or in-cluster service account) come from credentials.ts; client-node only for exec/auth plugins.
import { fetch } from 'undici';
import { type KubeAccess, type KubeCredentials, loadKubeAccess } from './credentials.js';
import { KubeApiError } from './errors.js';

export { KubeApiError } from './errors.js';
export { type KubeAccess, type KubeCredentials, loadKubeAccess, SERVICE_ACCOUNT_DIR } from './credentials.js';

export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

type Query = Record<string, string | undefined>;

export class KubeClient {
  private access: Promise<KubeAccess> | undefined;
  private serverUrl = '';

  constructor(private readonly creds: KubeCredentials) {}

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
    const res = await this.request('GET', path, query, { signal });
    const text = await res.text();
    if (res.status < 200 || res.status > 299) throw new KubeApiError(`GET ${path}: HTTP ${res.status}: ${statusMessage(text)}`, res.status);
    return parseObject(text, `GET ${path}`);
  }

  /** PATCH path with a JSON merge patch. */
  async mergePatch(path: string, patch: unknown, signal?: AbortSignal): Promise<Record<string, unknown>> {
    const res = await this.request('PATCH', path, {}, { signal, body: JSON.stringify(patch), contentType: 'application/merge-patch+json' });
    const text = await res.text();
    if (res.status < 200 || res.status > 299) throw new KubeApiError(`PATCH ${path}: HTTP ${res.status}: ${statusMessage(text)}`, res.status);
    return parseObject(text, `PATCH ${path}`);
  }

  /**
   * Opens a watch and yields its events until the server ends the stream or signal aborts. An HTTP error status
   * (410 Gone included) is thrown as a KubeApiError before the first event.
   */
  async *watch(path: string, query: Query, signal: AbortSignal): AsyncGenerator<WatchEvent> {
    const res = await this.request('GET', path, { ...query, watch: 'true' }, { signal });
    if (res.status !== 200) {
      const text = await res.text().catch(() => '');
      throw new KubeApiError(`watch ${path}: HTTP ${res.status}: ${statusMessage(text)}`, res.status);
    }
    if (!res.body) return;
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of res.body) {
      buf += decoder.decode(chunk as Uint8Array, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (line) yield parseWatchEvent(line, path);
      }
    }
  }

  private async request(method: 'GET' | 'PATCH', path: string, query: Query, opts: { signal?: AbortSignal | undefined; body?: string; contentType?: string }): Promise<Response> {
    await this.init();
    const access = await (this.access as Promise<KubeAccess>);
    const url = new URL(this.server.replace(/\/$/, '') + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, v);
    const { headers: auth, dispatcher } = await access.prepare(url, method);
    const headers: Record<string, string> = { ...auth, accept: 'application/json' };
    if (opts.contentType) headers['content-type'] = opts.contentType;
    try {
      return (await fetch(url, {
        method,
        headers,
        ...(opts.body !== undefined ? { body: opts.body } : {}),
        ...(dispatcher ? { dispatcher } : {}),
        ...(opts.signal ? { signal: opts.signal } : {}),
      })) as unknown as Response;
    } catch (err) {
      if (opts.signal?.aborted) throw err;
      throw new KubeApiError(`${method} ${url.origin}${path} failed (is the API server reachable?)`, undefined, { cause: err });
    }
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
