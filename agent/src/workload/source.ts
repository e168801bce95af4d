// The interface every workload source implements (a folder of files, or the Kubernetes API).
// A source holds the current Pods, Namespaces, policies, Services and EndpointSlices and tells listeners when they change.
import type { PeerAuthentication } from '../policy/peer-authentication.js';
import type { AuthorizationPolicy } from '../policy/authorization.js';
import type { EndpointSliceInfo, ServiceInfo } from './service-objects.js';
import type { NamespaceInfo, PodInfo } from './types.js';

export interface WorkloadChange {
  pods: { before: PodInfo | undefined; after: PodInfo | undefined }[];
  namespaces: { before: NamespaceInfo | undefined; after: NamespaceInfo | undefined }[];
  /** True when any PeerAuthentication or AuthorizationPolicy was added, changed or removed. */
  policies: boolean;
  /** True when any Service or EndpointSlice was added, changed or removed. */
  services: boolean;
}

export interface WorkloadSource {
  /**
   * Optional: checks the source's own configuration (e.g. the kubeconfig and its credentials) without network I/O, so
   * that a bad one fails the agent's start before it changes anything on the node. start() does it too.
   */
  prepare?(): Promise<void>;
  /** Loads the initial state; MUST be awaited before any lookup. */
  start(): Promise<void>;
  stop(): Promise<void>;
  getPod(namespace: string, name: string): PodInfo | undefined;
  getNamespace(name: string): NamespaceInfo | undefined;
  pods(): PodInfo[];
  peerAuthentications(): PeerAuthentication[];
  authorizationPolicies(): AuthorizationPolicy[];
  services(): ServiceInfo[];
  endpointSlices(): EndpointSliceInfo[];
  onChange(listener: (change: WorkloadChange) => void): void;
  /** Resolves when the pod appears, or with undefined after timeoutMs. */
  waitForPod(namespace: string, name: string, timeoutMs: number): Promise<PodInfo | undefined>;
  /**
   * Optional: records a pod's capture state where operators see it (the kubernetes source annotates the pod).
   * Best effort and non-blocking; undefined means not captured.
   */
  reportCapture?(pod: { namespace: string; name: string; uid: string }, state: 'enabled' | 'pending' | undefined): void;
}
