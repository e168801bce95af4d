// The `kubernetes` workload source: informers (list/watch reflectors) for this node's pods, all pods and namespaces
// (the workload directory), Services and EndpointSlices, and Istio's AuthorizationPolicy/PeerAuthentication; converted
// with the same code as files.
import type { Logger } from '../log.js';
import { malformedAuthorizationPolicy, type AuthorizationPolicy } from '../policy/authorization.js';
import { malformedPeerAuthentication, type PeerAuthentication } from '../policy/peer-authentication.js';
import { failClosedEffect, MALFORMED_POLICY_MSG } from '../policy/malformed.js';
import type { KubeClient } from './kube/client.js';
import { PodAnnotator, REDIRECTION_ANNOTATION, type CaptureState, type PodRef } from './kube/pod-annotator.js';
import { Reflector, type BackoffPolicy, type ReflectorChange } from './kube/reflector.js';
import type { WorkloadChange, WorkloadSource } from './source.js';
import { fromK8sObject, type NamespaceInfo, type PodInfo } from './types.js';
import type { EndpointSliceInfo, ServiceInfo } from './service-objects.js';
import { PodWaiters } from './pod-waiters.js';

export interface KubernetesSourceOptions {
  client: KubeClient;
  /** Pods with spec.nodeName equal to this are the ones this agent enrols. */
  nodeName: string;
  log: Logger;
  backoff?: BackoffPolicy;
  watchTimeoutSeconds?: number;
}

const TERMINAL_PHASES = new Set(['Succeeded', 'Failed']);

/** Pure: a raw Pod from a list or watch as PodInfo; terminated pods (their IPs are released) count as absent. */
export function podFromApi(raw: Record<string, unknown>): PodInfo | undefined {
  const phase = (raw.status as { phase?: unknown } | undefined)?.phase;
  if (typeof phase === 'string' && TERMINAL_PHASES.has(phase)) return undefined;
  const o = fromK8sObject({ ...raw, apiVersion: 'v1', kind: 'Pod' }); // list items carry no kind
  return o?.kind === 'Pod' ? o.pod : undefined;
}

export function namespaceFromApi(raw: Record<string, unknown>): NamespaceInfo | undefined {
  const o = fromK8sObject({ ...raw, apiVersion: 'v1', kind: 'Namespace' });
  return o?.kind === 'Namespace' ? o.namespace : undefined;
}

export function serviceFromApi(raw: Record<string, unknown>): ServiceInfo | undefined {
  const o = fromK8sObject({ ...raw, apiVersion: 'v1', kind: 'Service' });
  return o?.kind === 'Service' ? o.service : undefined;
}

export function endpointSliceFromApi(raw: Record<string, unknown>): EndpointSliceInfo | undefined {
  const o = fromK8sObject({ ...raw, apiVersion: 'discovery.k8s.io/v1', kind: 'EndpointSlice' });
  return o?.kind === 'EndpointSlice' ? o.endpointSlice : undefined;
}

export function authorizationPolicyFromApi(raw: Record<string, unknown>): AuthorizationPolicy | undefined {
  const o = fromK8sObject({ ...raw, apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy' });
  return o?.kind === 'AuthorizationPolicy' ? o.authorizationPolicy : undefined;
}

export function peerAuthenticationFromApi(raw: Record<string, unknown>): PeerAuthentication | undefined {
  const o = fromK8sObject({ ...raw, apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication' });
  return o?.kind === 'PeerAuthentication' ? o.peerAuthentication : undefined;
}

export class KubernetesWorkloadSource implements WorkloadSource {
  private readonly localPods: Reflector<PodInfo>;
  private readonly allPods: Reflector<PodInfo>;
  private readonly namespaces: Reflector<NamespaceInfo>;
  private readonly authz: Reflector<AuthorizationPolicy>;
  private readonly peerAuthn: Reflector<PeerAuthentication>;
  private readonly services_: Reflector<ServiceInfo>;
  private readonly slices: Reflector<EndpointSliceInfo>;
  private readonly annotator: PodAnnotator;
  private readonly listeners: ((c: WorkloadChange) => void)[] = [];
  private readonly waiters = new PodWaiters();

  constructor(private readonly o: KubernetesSourceOptions) {
    const common = { client: o.client, ...(o.backoff ? { backoff: o.backoff } : {}), ...(o.watchTimeoutSeconds ? { watchTimeoutSeconds: o.watchTimeoutSeconds } : {}) };
    const log = (resource: string): Logger => o.log.child({ resource });
    const none = { pods: [], namespaces: [], policies: false, services: false };
    const podChanges = (cs: ReflectorChange<PodInfo>[]): void => this.emit({ ...none, pods: cs.map(({ before, after }) => ({ before, after })) });
    this.localPods = new Reflector({ ...common, path: '/api/v1/pods', query: { fieldSelector: `spec.nodeName=${o.nodeName}` }, convert: podFromApi, onChange: podChanges, log: log('pods-on-node') });
    this.allPods = new Reflector({ ...common, path: '/api/v1/pods', convert: podFromApi, onChange: podChanges, log: log('pods') });
    this.namespaces = new Reflector({
      ...common, path: '/api/v1/namespaces', convert: namespaceFromApi, log: log('namespaces'),
      onChange: (cs) => this.emit({ ...none, namespaces: cs.map(({ before, after }) => ({ before, after })) }),
    });
    const services = (): void => this.emit({ ...none, services: true });
    this.services_ = new Reflector({ ...common, path: '/api/v1/services', convert: serviceFromApi, onChange: services, log: log('services') });
    this.slices = new Reflector({ ...common, path: '/apis/discovery.k8s.io/v1/endpointslices', convert: endpointSliceFromApi, onChange: services, log: log('endpointslices') });
    const policies = (): void => this.emit({ ...none, policies: true });
    this.authz = new Reflector({
      ...common, optional: true, path: '/apis/security.istio.io/v1/authorizationpolicies', convert: authorizationPolicyFromApi, log: log('authorizationpolicies'),
      // Fail closed: a new malformed policy denies everything in its scope until fixed or deleted.
      placeholder: malformedAuthorizationPolicy, placeholderMessage: `${MALFORMED_POLICY_MSG} (${failClosedEffect('AuthorizationPolicy')})`,
      onChange: (cs) => {
        for (const c of cs) for (const w of c.after?.warnings ?? []) o.log.warn({ policy: c.key, warning: w }, 'authorization policy uses a field L4 enforcement ignores');
        policies();
      },
    });
    this.peerAuthn = new Reflector({
      ...common, optional: true, path: '/apis/security.istio.io/v1/peerauthentications', convert: peerAuthenticationFromApi, onChange: policies, log: log('peerauthentications'),
      // Fail closed: a new malformed PeerAuthentication refuses plaintext in its scope until fixed or deleted.
      placeholder: malformedPeerAuthentication, placeholderMessage: `${MALFORMED_POLICY_MSG} (${failClosedEffect('PeerAuthentication')})`,
    });
    this.annotator = new PodAnnotator(o.client, (p) => this.annotationOf(p), o.log.child({ component: 'pod-annotator' }), o.backoff);
  }

  /** Lists everything once (retrying until the API answers), then keeps watching. */
  /** Loads the kubeconfig or in-cluster credentials (files only, no request): a broken one fails here. */
  async prepare(): Promise<void> {
    await this.o.client.init();
  }

  async start(): Promise<void> {
    await this.o.client.init();
    await Promise.all(this.reflectors().map((r) => r.start()));
    this.o.log.info({
      pods: this.allPods.values().length, podsOnNode: this.localPods.values().length, namespaces: this.namespaces.values().length,
      services: this.services_.values().length, endpointSlices: this.slices.values().length, server: this.o.client.server,
    }, 'kubernetes informers synced');
  }

  async stop(): Promise<void> {
    await this.annotator.stop();
    await Promise.all(this.reflectors().map((r) => r.stop()));
    await this.o.client.close();
  }

  /** Informer counters, for tests and the admin dump. */
  stats(): Record<string, Reflector<unknown>['stats']> {
    return {
      podsOnNode: this.localPods.stats, pods: this.allPods.stats, namespaces: this.namespaces.stats, services: this.services_.stats,
      endpointSlices: this.slices.stats, authorizationPolicies: this.authz.stats, peerAuthentications: this.peerAuthn.stats,
    };
  }

  getPod(namespace: string, name: string): PodInfo | undefined {
    const key = `${namespace}/${name}`;
    return this.localPods.get(key) ?? this.allPods.get(key);
  }

  getNamespace(name: string): NamespaceInfo | undefined {
    return this.namespaces.get(name);
  }

  pods(): PodInfo[] {
    const out = new Map<string, PodInfo>();
    for (const p of this.allPods.values()) out.set(`${p.namespace}/${p.name}`, p);
    for (const p of this.localPods.values()) out.set(`${p.namespace}/${p.name}`, p);
    return [...out.values()];
  }

  /** Pods the API schedules on this node. */
  podsOnNode(): PodInfo[] {
    return this.localPods.values();
  }

  peerAuthentications(): PeerAuthentication[] {
    return this.peerAuthn.values();
  }

  authorizationPolicies(): AuthorizationPolicy[] {
    return this.authz.values();
  }

  services(): ServiceInfo[] {
    return this.services_.values();
  }

  endpointSlices(): EndpointSliceInfo[] {
    return this.slices.values();
  }

  onChange(listener: (change: WorkloadChange) => void): void {
    this.listeners.push(listener);
  }

  async waitForPod(namespace: string, name: string, timeoutMs: number): Promise<PodInfo | undefined> {
    return this.waiters.wait(() => this.getPod(namespace, name), timeoutMs);
  }

  reportCapture(pod: PodRef, state: CaptureState | undefined): void {
    this.annotator.set(pod, state);
  }

  private annotationOf(p: PodRef): { exists: boolean; value: string | undefined } {
    const pod = this.getPod(p.namespace, p.name);
    if (!pod || (p.uid && pod.uid && pod.uid !== p.uid)) return { exists: false, value: undefined };
    return { exists: true, value: pod.annotations[REDIRECTION_ANNOTATION] };
  }

  private reflectors(): Reflector<unknown>[] {
    return [this.localPods, this.allPods, this.namespaces, this.services_, this.slices, this.authz, this.peerAuthn] as Reflector<unknown>[];
  }

  private emit(change: WorkloadChange): void {
    this.waiters.notify();
    for (const l of this.listeners) {
      try {
        l(change);
      } catch (err) {
        this.o.log.error({ err }, 'workload change listener failed');
      }
    }
  }
}
