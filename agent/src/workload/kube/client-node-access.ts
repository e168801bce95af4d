// The fallback for kubeconfigs the reader in kubeconfig.ts does not implement (exec credential plugins, auth providers
// such as oidc, proxies): @kubernetes/client-node's KubeConfig and undici, loaded only here (about 75 MB of RSS).
import { KubeConfig, RequestContext } from '@kubernetes/client-node';
import { type Dispatcher, fetch } from 'undici';
import type { KubeAccess } from './credentials.js';
import { KubeApiError } from './errors.js';
import type { KubeHttpResponse } from './http-transport.js';

/** `reason` is the kubeconfig field that needs client-node (kept for errors). */
export function clientNodeAccess(file: string, reason: string): KubeAccess {
  const kc = new KubeConfig();
  try {
    kc.loadFromFile(file);
  } catch (err) {
    throw new KubeApiError(`cannot load kubeconfig ${file} (through @kubernetes/client-node, for ${reason})`, undefined, { cause: err });
  }
  const server = kc.getCurrentCluster()?.server;
  if (!server) throw new KubeApiError(`kubeconfig ${file} has no current cluster`);
  // One pool for every request: client-node builds a new dispatcher per call; the first one is kept.
  let dispatcher: Dispatcher | undefined;
  let dispatcherSet = false;
  return {
    server,
    via: 'client-node',
    async headers(url, method) {
      const ctx = new RequestContext(url.toString(), method as ConstructorParameters<typeof RequestContext>[1]);
      try {
        await kc.applySecurityAuthentication(ctx);
      } catch (err) {
        throw new KubeApiError(`kubeconfig ${file}: ${reason} failed to produce credentials`, undefined, { cause: err });
      }
      if (!dispatcherSet) {
        dispatcher = ctx.getDispatcher() as Dispatcher | undefined;
        dispatcherSet = true;
      }
      return ctx.getHeaders();
    },
    async send(request): Promise<KubeHttpResponse> {
      // fetch asks for and decodes compressed bodies itself.
      const res = await fetch(request.url, {
        method: request.method,
        headers: request.headers,
        ...(request.body !== undefined ? { body: request.body } : {}),
        ...(dispatcher ? { dispatcher } : {}),
        signal: request.signal,
      });
      const body = res.body;
      return {
        status: res.status,
        body: body ?? emptyBody(),
        discard: () => void body?.cancel().catch(() => undefined),
      };
    },
    close: async () => void (await dispatcher?.close().catch(() => undefined)),
  };
}

async function* emptyBody(): AsyncGenerator<Uint8Array> {
  // no body
}
