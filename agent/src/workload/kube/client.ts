// A minimal Kubernetes API client: credentials from a kubeconfig or the in-cluster service account, raw JSON GET,
// line-by-line watch streams and merge patches. @kubernetes/client-node (loaded on first use: it is big) supplies auth and TLS; undici does the HTTP.
import { readFileSync } from 'node:fs';
import { isIPv6 } from 'node:net';
import { join } from 'node:path';
import type { KubeConfig, RequestContext } from '@kubernetes/client-node';
import { fetch, type Dispatcher } from 'undici';
import { AmbientError } from '../../errors.js';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

export class KubeApiError extends AmbientError<'AMB_ERR_KUBE_API'> {
  constructor(msg: string, readonly status?: number, options: { cause?: unknown } = {}) {
    super('AMB_ERR_KUBE_API', msg, options);
  }
}

/** Where the credentials come from: a kubeconfig file, or the pod's service account (token + CA) and the service env vars. */
export type KubeCredentials =
  | { kubeconfig: string }
  | { inCluster: { env: Record<string, string | undefined>; dir?: string } };

type ClientNode = typeof import('@kubernetes/client-node');
let clientNode: Promise<ClientNode> | undefined;
const loadClientNode = (): Promise<ClientNode> => (clientNode ??= import('@kubernetes/client-node'));

/** Builds the client-node KubeConfig; throws a KubeApiError naming what is missing. */
export async function loadKubeConfig(creds: KubeCredentials): Promise<KubeConfig> {
  const kc = new (await loadClientNode()).KubeConfig();
  if ('kubeconfig' in creds) {
    try {
      kc.loadFromFile(creds.kubeconfig);
    } catch (err) {
      throw new KubeApiError(`cannot load kubeconfig ${creds.kubeconfig}`, undefined, { cause: err });
    }
    if (!kc.getCurrentCluster()) throw new KubeApiError(`kubeconfig ${creds.kubeconfig} has no current cluster`);
    return kc;
  }
  const { env, dir = SERVICE_ACCOUNT_DIR } = creds.inCluster;
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new KubeApiError('in-cluster config needs KUBERNETES_SERVICE_HOST (is the agent running in a pod?); set kubeconfig otherwise');
  for (const f of ['token', 'ca.crt']) {
    try {
      readFileSync(join(dir, f));
    } catch (err) {
      throw new KubeApiError(`in-cluster config: cannot read ${join(dir, f)} (service-account token and CA)`, undefined, { cause: err });
    }
  }
  kc.loadFromClusterAndUser(
    { name: 'in-cluster', server: `https://${isIPv6(host) ? `[${host}]` : host}:${port}`, caFile: join(dir, 'ca.crt'), skipTLSVerify: false },
    // The tokenFile provider re-reads the projected token every minute, so rotated tokens are picked up.
    { name: 'in-cluster', authProvider: { name: 'tokenFile', config: { tokenFile: join(dir, 'token') } } },
  );
  return kc;
}

export interface WatchEvent {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: Record<string, unknown>;
}

type Query = Record<string, string | undefined>;

export class KubeClient {
  /** One connection pool for every request (client-node makes a new one per call). */
  private dispatcher: Dispatcher | undefined;
  private dispatcherSet = false;
  private loaded: Promise<{ kc: KubeConfig; RequestContext: typeof RequestContext }> | undefined;
  private serverUrl = '';

  constructor(private readonly creds: KubeCredentials) {}

  /** Loads the credentials; MUST succeed before anything else works (a bad kubeconfig or missing token fails here). */
  async init(): Promise<void> {
    this.loaded ??= (async () => {
      const [kc, { RequestContext: Ctx }] = await Promise.all([loadKubeConfig(this.creds), loadClientNode()]);
      this.serverUrl = kc.getCurrentCluster()?.server ?? '';
      return { kc, RequestContext: Ctx };
    })();
    await this.loaded;
  }

  get server(): string {
    return this.serverUrl;
  }

  async close(): Promise<void> {
    await this.dispatcher?.close().catch(() => undefined);
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
    const { kc, RequestContext: Ctx } = await (this.loaded as NonNullable<typeof this.loaded>);
    const url = new URL(this.server.replace(/\/$/, '') + path);
    for (const [k, v] of Object.entries(query)) if (v !== undefined) url.searchParams.set(k, v);
    const ctx = new Ctx(url.toString(), method);
    await kc.applySecurityAuthentication(ctx);
    if (!this.dispatcherSet) {
      this.dispatcher = ctx.getDispatcher() as Dispatcher | undefined;
      this.dispatcherSet = true;
    }
    const headers: Record<string, string> = { ...ctx.getHeaders(), accept: 'application/json' };
    if (opts.contentType) headers['content-type'] = opts.contentType;
    try {
      return (await fetch(url, {
        method,
        headers,
        ...(opts.body !== undefined ? { body: opts.body } : {}),
        ...(this.dispatcher ? { dispatcher: this.dispatcher } : {}),
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
