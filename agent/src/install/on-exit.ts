// What the installer does when it is stopped: keep the plugin (an upgrade, a restart, a node drain) unless its DaemonSet
// is gone or being deleted (an uninstall). Asks the API server with the pod's service-account token; doubt keeps it.
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { formatHostPort } from '../protocol/address.js';

export interface DaemonSetRef {
  namespace: string;
  name: string;
}

export interface KubeApi {
  /** Base URL, e.g. https://10.96.0.1:443. */
  server: string;
  token?: string;
  ca?: Buffer;
}

/** What the API server said about the DaemonSet: its status code and, on 200, whether it carries a deletionTimestamp. */
export type DaemonSetLookup = { status: number; deleting: boolean } | { error: string };

export interface ExitDecision {
  uninstall: boolean;
  reason: string;
}

/**
 * Pure: uninstall only on proof that the DaemonSet is going away (404, or a deletionTimestamp). Anything else, including
 * an unreachable API server or a 401/403, keeps the plugin: a node whose pods wait for an agent is recoverable, a pod
 * that started uncaptured is not.
 */
export function decideOnExit(ds: DaemonSetRef, r: DaemonSetLookup): ExitDecision {
  const what = `DaemonSet ${ds.namespace}/${ds.name}`;
  if ('error' in r) return { uninstall: false, reason: `${what} could not be looked up (${r.error}); keeping ambient-cni installed` };
  if (r.status === 404) return { uninstall: true, reason: `${what} is gone: uninstalling ambient-cni` };
  if (r.status === 200 && r.deleting) return { uninstall: true, reason: `${what} is being deleted: uninstalling ambient-cni` };
  if (r.status === 200) return { uninstall: false, reason: `${what} still exists (upgrade or restart): keeping ambient-cni installed` };
  return { uninstall: false, reason: `${what} lookup answered HTTP ${r.status}; keeping ambient-cni installed` };
}

export function parseDaemonSetRef(v: string): DaemonSetRef {
  const m = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?)\/([a-z0-9]([-.a-z0-9]*[a-z0-9])?)$/.exec(v);
  if (!m?.[1] || !m[3]) throw new Error(`expected NAMESPACE/NAME, got ${JSON.stringify(v)}`);
  return { namespace: m[1], name: m[3] };
}

const SA_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** The in-cluster API server and credentials ($KUBERNETES_SERVICE_HOST/PORT, the mounted service-account token and CA). */
export async function inClusterApi(env: NodeJS.ProcessEnv = process.env): Promise<KubeApi> {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT ?? '443';
  if (!host) throw new Error('KUBERNETES_SERVICE_HOST is not set (not running in a pod?): pass --kube-api');
  const server = `https://${formatHostPort(host, port)}`;
  const [token, ca] = await Promise.all([readFile(`${SA_DIR}/token`, 'utf8').catch(() => undefined), readFile(`${SA_DIR}/ca.crt`).catch(() => undefined)]);
  return { server, ...(token ? { token: token.trim() } : {}), ...(ca ? { ca } : {}) };
}

/** GET the DaemonSet; never throws (a failure is a lookup error, which keeps the plugin). */
export function lookupDaemonSet(api: KubeApi, ds: DaemonSetRef, timeoutMs = 5_000): Promise<DaemonSetLookup> {
  return new Promise((resolve) => {
    let url: URL;
    try {
      url = new URL(`/apis/apps/v1/namespaces/${encodeURIComponent(ds.namespace)}/daemonsets/${encodeURIComponent(ds.name)}`, api.server);
    } catch (err) {
      resolve({ error: err instanceof Error ? err.message : String(err) });
      return;
    }
    const headers: Record<string, string> = { accept: 'application/json', ...(api.token ? { authorization: `Bearer ${api.token}` } : {}) };
    const onResponse = (res: http.IncomingMessage): void => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        let deleting = false;
        if (status === 200) {
          try {
            const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { metadata?: { deletionTimestamp?: unknown } };
            deleting = typeof body.metadata?.deletionTimestamp === 'string';
          } catch {
            resolve({ error: 'the DaemonSet answer is not JSON' });
            return;
          }
        }
        resolve({ status, deleting });
      });
      res.on('error', (err) => resolve({ error: err.message }));
    };
    const req = url.protocol === 'https:'
      ? https.get(url, { headers, timeout: timeoutMs, ...(api.ca ? { ca: api.ca } : {}) }, onResponse)
      : http.get(url, { headers, timeout: timeoutMs }, onResponse);
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', (err) => resolve({ error: err.message }));
  });
}
