// The fallback for kubeconfigs the reader in kubeconfig.ts does not implement (exec credential plugins, auth providers
// such as oidc, proxies): @kubernetes/client-node's KubeConfig, loaded only here (about 75 MB of RSS), signs each request.
import { KubeConfig, RequestContext } from '@kubernetes/client-node';
import type { Dispatcher } from 'undici';
import type { KubeAccess } from './credentials.js';
import { KubeApiError } from './errors.js';

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
    async prepare(url, method) {
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
      return { headers: ctx.getHeaders(), dispatcher };
    },
    close: async () => void (await dispatcher?.close().catch(() => undefined)),
  };
}
