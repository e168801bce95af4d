// Keeps every node's kube-proxy rules and the cluster DNS in step with the workloads folder: one sync writes the
// controller's EndpointSlices, reads all Services and EndpointSlices (the agent's own parser), renders and applies them.
import { watch, type FSWatcher } from 'node:fs';
import { chmod, readdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { parseWorkloadFile } from '../../agent/src/workload/files-source.js';
import type { EndpointSliceInfo, ServiceInfo } from '../../agent/src/workload/service-objects.js';
import { renderDnsHosts } from './cluster-dns.js';
import { renderedServiceChains, renderKubeProxyRules } from './kube-proxy.js';
import { applyIptables, type DnsServer } from './node-services.js';
import type { WorkloadsDir } from './workloads.js';

const YAML_FILE = /\.(ya?ml|json)$/;

export interface ServiceSyncOptions {
  workloads: WorkloadsDir;
  nodes: readonly { name: string; netnsName: string }[];
  /** The EndpointSlice controller's output now: file name -> the slices it holds (files no longer listed are removed). */
  controllerFiles: () => Map<string, object[]>;
  /** The hosts file every dnsmasq serves (inside their hosts dir), its temp dir (same filesystem, outside the hosts dir), the servers. */
  dns: { hostsFile: string; tmpDir: string; servers: readonly DnsServer[]; current: string };
  /** A sync started by the folder watcher failed (awaited syncs reject instead). */
  onBackgroundError: (err: unknown) => void;
  /** Default 100. */
  debounceMs?: number;
}

/** The Services and EndpointSlices of the workloads folder. */
export interface ServiceState {
  services: ServiceInfo[];
  slices: EndpointSliceInfo[];
}

export class ServiceSync {
  readonly #o: ServiceSyncOptions;
  #running: Promise<void> | undefined;
  #queued: Promise<void> | undefined;
  #closed = false;
  #watcher: FSWatcher | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Controller files as last written (JSON of their objects). */
  readonly #written = new Map<string, string>();
  /** Per node netns: the iptables-restore text last applied and the per-service chains it left. */
  readonly #applied = new Map<string, { text: string; chains: string[] }>();
  #hosts: string;
  readonly #cache = new Map<string, { key: string; services: ServiceInfo[]; slices: EndpointSliceInfo[] }>();
  /** How many syncs ran to completion (for tests and diagnostics). */
  completed = 0;

  constructor(opts: ServiceSyncOptions) {
    this.#o = opts;
    this.#hosts = opts.dns.current;
  }

  /**
   * A sync that starts after this call: the running one is not enough (it may have read the folder before the caller's
   * change), so callers during a run share the one queued behind it.
   */
  request(): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('service sync is closed'));
    if (this.#running === undefined) return this.#start();
    this.#queued ??= this.#running
      .then(
        () => undefined,
        () => undefined,
      )
      .then(() => {
        this.#queued = undefined;
        return this.#start();
      });
    return this.#queued;
  }

  /** Re-sync (debounced) whenever a file of the workloads folder changes, e.g. a Service written with writeWorkload. */
  watch(): void {
    const ms = this.#o.debounceMs ?? 100;
    this.#watcher = watch(this.#o.workloads.dir, (_event, file) => {
      if (this.#closed || (typeof file === 'string' && file.startsWith('.'))) return;
      clearTimeout(this.#timer);
      this.#timer = setTimeout(() => {
        if (!this.#closed) this.request().catch((err: unknown) => this.#o.onBackgroundError(err));
      }, ms);
    });
    this.#watcher.on('error', (err) => this.#o.onBackgroundError(err));
  }

  /** Stop watching and wait for a sync in flight; no sync runs afterwards. */
  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#watcher?.close();
    await Promise.allSettled([this.#running, this.#queued]);
  }

  /** The Services and EndpointSlices in the folder now (files that fail to parse count as empty). */
  async readState(): Promise<ServiceState> {
    const dir = this.#o.workloads.dir;
    const names = (await readdir(dir)).filter((f) => YAML_FILE.test(f) && !f.startsWith('.')).sort();
    const out: ServiceState = { services: [], slices: [] };
    for (const gone of [...this.#cache.keys()].filter((k) => !names.includes(k))) this.#cache.delete(gone);
    for (const name of names) {
      let entry = this.#cache.get(name);
      try {
        const st = await stat(join(dir, name));
        const key = `${st.ino}:${st.mtimeMs}:${st.size}`;
        if (entry?.key !== key) {
          entry = { key, services: [], slices: [] };
          try {
            for (const o of parseWorkloadFile(name, await readFile(join(dir, name), 'utf8'))) {
              if (o.kind === 'Service') entry.services.push(o.service);
              else if (o.kind === 'EndpointSlice') entry.slices.push(o.endpointSlice);
            }
          } catch {
            // Not ours to judge (a test may write a broken file on purpose for the agent): nothing from it.
          }
          this.#cache.set(name, entry);
        }
      } catch {
        this.#cache.delete(name); // removed meanwhile
        continue;
      }
      out.services.push(...entry.services);
      out.slices.push(...entry.slices);
    }
    return out;
  }

  #start(): Promise<void> {
    const p: Promise<void> = this.#run().finally(() => {
      if (this.#running === p) this.#running = undefined;
    });
    this.#running = p;
    return p;
  }

  async #run(): Promise<void> {
    if (this.#closed) return;
    await this.#writeControllerFiles();
    const { services, slices } = await this.readState();
    if (this.#closed) return;
    await Promise.all(
      this.#o.nodes.map(async (node) => {
        const last = this.#applied.get(node.netnsName);
        const text = renderKubeProxyRules(services, slices, { nodeName: node.name, existingChains: last?.chains ?? [] });
        if (text === last?.text) return;
        await applyIptables(node.netnsName, text);
        this.#applied.set(node.netnsName, { text, chains: renderedServiceChains(text) });
      }),
    );
    await this.#writeHosts(renderDnsHosts(services, slices));
    this.completed++;
  }

  async #writeControllerFiles(): Promise<void> {
    const desired = this.#o.controllerFiles();
    for (const [file, docs] of desired) {
      const json = JSON.stringify(docs);
      if (this.#written.get(file) === json) continue;
      await this.#o.workloads.write(file, docs);
      this.#written.set(file, json);
    }
    for (const file of [...this.#written.keys()]) {
      if (desired.has(file)) continue;
      await this.#o.workloads.remove(file);
      this.#written.delete(file);
    }
  }

  /** Replace the hosts file atomically (rename), then wait until every dnsmasq has re-read it. */
  async #writeHosts(hosts: string): Promise<void> {
    if (hosts === this.#hosts) return;
    const { hostsFile, tmpDir, servers } = this.#o.dns;
    const before = servers.map((s) => s.reads);
    const tmp = join(tmpDir, `hosts.${randomBytes(3).toString('hex')}`);
    await writeFile(tmp, hosts);
    await chmod(tmp, 0o644);
    await rename(tmp, hostsFile);
    this.#hosts = hosts;
    await Promise.all(servers.map((s, i) => s.waitForReads((before[i] ?? 0) + 1)));
  }
}
