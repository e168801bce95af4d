// The `files` workload source: a folder of Kubernetes-shaped YAML (Pod, Namespace, policies, Service, EndpointSlice),
// re-read when it changes. A file that fails to parse keeps its previous objects in force; other kinds are logged once.
import { watch, type FSWatcher } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import type { Logger } from '../log.js';
import type { WorkloadChange, WorkloadSource } from './source.js';
import { fromK8sObject, type NamespaceInfo, type PodInfo, type WorkloadObject } from './types.js';
import type { PeerAuthentication } from '../policy/peer-authentication.js';
import type { AuthorizationPolicy } from '../policy/authorization.js';
import type { EndpointSliceInfo, ServiceInfo } from './service-objects.js';
import { PodWaiters } from './pod-waiters.js';

const YAML_FILE = /\.(ya?ml|json)$/;

/**
 * Parses one file's text into workload objects; throws with the file's name and the failing field. Objects of kinds
 * (or versions) the agent does not read are passed to `onUnknown` as `apiVersion kind ns/name`.
 */
export function parseWorkloadFile(name: string, text: string, onUnknown?: (what: string) => void): WorkloadObject[] {
  const out: WorkloadObject[] = [];
  for (const doc of parseAllDocuments(text)) {
    if (doc.errors.length > 0) throw new Error(`${name}: ${doc.errors[0]?.message}`);
    const value: unknown = doc.toJS();
    if (value === null || value === undefined) continue;
    const items = isList(value) ? value.items : [value];
    for (const item of items) {
      try {
        const obj = fromK8sObject(item);
        if (obj) out.push(obj);
        else onUnknown?.(describeObject(item));
      } catch (err) {
        throw new Error(`${name}: ${(err as Error).message}`, { cause: err });
      }
    }
  }
  return out;
}

function isList(v: unknown): v is { items: unknown[] } {
  return typeof v === 'object' && v !== null && (v as { kind?: unknown }).kind === 'List' && Array.isArray((v as { items?: unknown }).items);
}

/** `apiVersion kind namespace/name` of a raw object, for the log. */
export function describeObject(item: unknown): string {
  const o = (typeof item === 'object' && item !== null ? item : {}) as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } };
  const m = o.metadata ?? {};
  return `${String(o.apiVersion ?? '?')} ${String(o.kind ?? '?')} ${String(m.namespace ?? 'default')}/${String(m.name ?? '?')}`;
}

const podKey = (ns: string, name: string): string => `${ns}/${name}`;

/** JSON.stringify replacer that makes Maps comparable. */
const mapReplacer = (_k: string, v: unknown): unknown => (v instanceof Map ? [...v.entries()] : typeof v === 'bigint' ? v.toString() : v);

export class FilesWorkloadSource implements WorkloadSource {
  private pods_ = new Map<string, PodInfo>();
  private namespaces = new Map<string, NamespaceInfo>();
  private peerAuthns: PeerAuthentication[] = [];
  private authzPolicies: AuthorizationPolicy[] = [];
  private services_: ServiceInfo[] = [];
  private slices: EndpointSliceInfo[] = [];
  /** Kinds already reported as not understood (logged once each, at debug). */
  private readonly unknownKinds = new Set<string>();
  private byFile = new Map<string, WorkloadObject[]>();
  private listeners: ((c: WorkloadChange) => void)[] = [];
  private readonly waiters = new PodWaiters();
  private watcher: FSWatcher | undefined;
  private poll: NodeJS.Timeout | undefined;
  private rescanQueued = false;
  private rescanning: Promise<void> | undefined;

  constructor(private readonly dir: string, private readonly log: Logger, private readonly pollMs = 2000) {}

  async start(): Promise<void> {
    await this.rescan();
    try {
      this.watcher = watch(this.dir, () => this.queueRescan());
      this.watcher.on('error', (err) => this.log.warn({ err }, 'workloads dir watch failed; polling only'));
    } catch (err) {
      this.log.warn({ err, dir: this.dir }, 'cannot watch workloads dir; polling only');
    }
    // inotify misses nothing in practice, but a periodic rescan covers editors that replace the directory.
    this.poll = setInterval(() => this.queueRescan(), this.pollMs);
    this.poll.unref();
  }

  async stop(): Promise<void> {
    this.watcher?.close();
    if (this.poll) clearInterval(this.poll);
    await this.rescanning;
  }

  getPod(namespace: string, name: string): PodInfo | undefined {
    return this.pods_.get(podKey(namespace, name));
  }

  getNamespace(name: string): NamespaceInfo | undefined {
    return this.namespaces.get(name);
  }

  pods(): PodInfo[] {
    return [...this.pods_.values()];
  }

  peerAuthentications(): PeerAuthentication[] {
    return this.peerAuthns;
  }

  authorizationPolicies(): AuthorizationPolicy[] {
    return this.authzPolicies;
  }

  services(): ServiceInfo[] {
    return this.services_;
  }

  endpointSlices(): EndpointSliceInfo[] {
    return this.slices;
  }

  onChange(listener: (change: WorkloadChange) => void): void {
    this.listeners.push(listener);
  }

  async waitForPod(namespace: string, name: string, timeoutMs: number): Promise<PodInfo | undefined> {
    if (!this.getPod(namespace, name) && timeoutMs > 0) this.queueRescan();
    return this.waiters.wait(() => this.getPod(namespace, name), timeoutMs);
  }

  /** Re-reads the folder now (coalescing concurrent requests). */
  async rescanNow(): Promise<void> {
    while (this.rescanning) await this.rescanning;
    this.queueRescan();
    await this.rescanning;
  }

  private queueRescan(): void {
    if (this.rescanning) {
      this.rescanQueued = true;
      return;
    }
    this.rescanning = this.rescan()
      .catch((err: unknown) => this.log.error({ err }, 'workloads rescan failed'))
      .finally(() => {
        this.rescanning = undefined;
        if (this.rescanQueued) {
          this.rescanQueued = false;
          this.queueRescan();
        }
      });
  }

  private async rescan(): Promise<void> {
    let names: string[];
    try {
      names = (await readdir(this.dir)).filter((n) => YAML_FILE.test(n) && !n.startsWith('.'));
    } catch (err) {
      this.log.error({ err, dir: this.dir }, 'cannot read workloads dir; keeping the last known state');
      return;
    }
    const next = new Map<string, WorkloadObject[]>();
    for (const name of names) {
      try {
        next.set(name, parseWorkloadFile(name, await readFile(join(this.dir, name), 'utf8'), (what) => this.unknown(name, what)));
      } catch (err) {
        const prev = this.byFile.get(name);
        if (prev) next.set(name, prev);
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          this.log.warn({ file: name, error: (err as Error).message }, 'ignoring malformed workload file; previous objects stay in force');
        }
      }
    }
    this.byFile = next;
    this.apply([...next.values()].flat());
  }

  /** Objects the agent does not read: logged once per apiVersion and kind, at debug. */
  private unknown(file: string, what: string): void {
    const kind = what.split(' ').slice(0, 2).join(' ');
    if (this.unknownKinds.has(kind)) return;
    this.unknownKinds.add(kind);
    this.log.debug({ file, object: what }, 'ignoring an object of a kind the agent does not read (logged once per kind)');
  }

  private apply(objects: WorkloadObject[]): void {
    const pods = new Map<string, PodInfo>();
    const namespaces = new Map<string, NamespaceInfo>();
    const peerAuthns: PeerAuthentication[] = [];
    const authzPolicies: AuthorizationPolicy[] = [];
    const services: ServiceInfo[] = [];
    const slices: EndpointSliceInfo[] = [];
    for (const o of objects) {
      if (o.kind === 'Pod') pods.set(podKey(o.pod.namespace, o.pod.name), o.pod);
      else if (o.kind === 'Namespace') namespaces.set(o.namespace.name, o.namespace);
      else if (o.kind === 'PeerAuthentication') peerAuthns.push(o.peerAuthentication);
      else if (o.kind === 'AuthorizationPolicy') authzPolicies.push(o.authorizationPolicy);
      else if (o.kind === 'Service') services.push(o.service);
      else slices.push(o.endpointSlice);
    }
    const servicesChanged = JSON.stringify([services, slices]) !== JSON.stringify([this.services_, this.slices]);
    const policies = JSON.stringify([peerAuthns, authzPolicies], mapReplacer) !== JSON.stringify([this.peerAuthns, this.authzPolicies], mapReplacer);
    if (policies) {
      for (const p of authzPolicies) {
        for (const w of p.warnings) this.log.warn({ policy: `${p.namespace}/${p.name}`, warning: w }, 'authorization policy uses a field L4 enforcement ignores');
      }
    }
    const change: WorkloadChange = { pods: [], namespaces: [], policies, services: servicesChanged };
    for (const key of new Set([...this.pods_.keys(), ...pods.keys()])) {
      const before = this.pods_.get(key);
      const after = pods.get(key);
      if (JSON.stringify(before) !== JSON.stringify(after)) change.pods.push({ before, after });
    }
    for (const key of new Set([...this.namespaces.keys(), ...namespaces.keys()])) {
      const before = this.namespaces.get(key);
      const after = namespaces.get(key);
      if (JSON.stringify(before) !== JSON.stringify(after)) change.namespaces.push({ before, after });
    }
    this.pods_ = pods;
    this.namespaces = namespaces;
    this.peerAuthns = peerAuthns;
    this.authzPolicies = authzPolicies;
    this.services_ = services;
    this.slices = slices;
    this.waiters.notify();
    if (change.pods.length === 0 && change.namespaces.length === 0 && !policies && !servicesChanged) return;
    for (const l of this.listeners) {
      try {
        l(change);
      } catch (err) {
        this.log.error({ err }, 'workload change listener failed');
      }
    }
  }
}
