// The workload directory: for any IP, is it a mesh workload, and who is it (namespace, service account, identity, node).
// Derived from the workload source's Pods and Namespaces with Istio's enrolment rule; rebuilt on every change.
import { spiffeId } from '../identity/spiffe.js';
import { decideEnrolment } from './enrolment.js';
import type { WorkloadSource } from './source.js';
import type { PodInfo } from './types.js';

export interface MeshWorkload {
  ip: string;
  namespace: string;
  name: string;
  serviceAccount: string;
  /** spiffe://<trust domain>/ns/<namespace>/sa/<service account> */
  identity: string;
  node: string;
}

export function workloadIdentity(trustDomain: string, pod: Pick<PodInfo, 'namespace' | 'serviceAccount'>): string {
  return spiffeId(trustDomain, pod.namespace, pod.serviceAccount);
}

/** Pure: every IP of every pod selected for the mesh. A later pod with the same IP wins (IPs are reused). */
export function buildDirectory(source: Pick<WorkloadSource, 'pods' | 'getNamespace'>, trustDomain: string): Map<string, MeshWorkload> {
  const out = new Map<string, MeshWorkload>();
  for (const pod of source.pods()) {
    if (pod.podIPs.length === 0) continue;
    if (!decideEnrolment(pod, source.getNamespace(pod.namespace)).enrol) continue;
    let identity: string;
    try {
      identity = workloadIdentity(trustDomain, pod);
    } catch {
      continue; // a name that cannot form a SPIFFE ID: not a mesh destination (traffic to it stays plain)
    }
    for (const ip of pod.podIPs) {
      out.set(ip, {
        ip,
        namespace: pod.namespace,
        name: pod.name,
        serviceAccount: pod.serviceAccount,
        identity,
        node: pod.nodeName,
      });
    }
  }
  return out;
}

export class WorkloadDirectory {
  private byIp = new Map<string, MeshWorkload>();

  constructor(private readonly source: WorkloadSource, readonly trustDomain: string) {
    this.rebuild();
    source.onChange(() => this.rebuild());
  }

  lookup(ip: string): MeshWorkload | undefined {
    return this.byIp.get(ip);
  }

  all(): MeshWorkload[] {
    return [...this.byIp.values()];
  }

  private rebuild(): void {
    this.byIp = buildDirectory(this.source, this.trustDomain);
  }
}
