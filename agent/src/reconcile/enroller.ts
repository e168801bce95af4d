// Pod enrolment: ADD/DEL/CHECK/GC from the plugin, re-adoption after a restart, and late (un)enrolment when labels change.
// Holds every attachment's record, its open netns handle and its forwarder; all work on one attachment is serialised.
import type { CniEvent, EventVerdict, GcEvent } from '../protocol/cni-event.js';
import { AgentError, describe } from '../errors.js';
import type { Logger } from '../log.js';
import { Netns, sameNetns, statNetns } from '../platform/netns.js';
import { isIPv4 } from 'node:net';
import { netnsAddresses } from '../platform/proc-netns.js';
import { PodForwarder, type ForwarderStats, type MeshContext, type PodSelf } from '../forwarder/pod-forwarder.js';
import type { ConnectionSnapshot } from '../forwarder/connections.js';
import { effectiveMtlsMode } from '../policy/peer-authentication.js';
import { authorize } from '../policy/authorization.js';
import { workloadIdentity } from '../workload/directory.js';
import { removePodRules, type PodContext, type RedirectBackend, type RuleDrift } from '../redirect/backend.js';
import { KeyedMutex } from '../registry/keyed-mutex.js';
import { recordKey, type PodRecord, type StateStore } from '../registry/state-store.js';
import { decideEnrolment } from '../workload/enrolment.js';
import type { WorkloadChange, WorkloadSource } from '../workload/source.js';
import type { PodInfo } from '../workload/types.js';

interface Live {
  netns: Netns;
  forwarder: PodForwarder;
}

export interface PodView extends PodRecord {
  listening: boolean;
  stats?: ForwarderStats;
}

/** What `ambient-node rules <pod>` shows for one attachment: the rules expected in its netns, those found, the drift. */
export interface PodRulesReport {
  pod: string;
  containerId: string;
  ifname: string;
  netns: string;
  state: PodRecord['state'];
  backend: string;
  expected: string[];
  actual: string[];
  missing: string[];
  unexpected: string[];
  listening: boolean;
  /** True when the pod is enrolled and its rules and listeners are all in place, or it is not enrolled and has none. */
  ok: boolean;
  /** Set when the rules could not be read (e.g. the netns is gone). */
  error?: string;
}

export interface EnrollerCounters {
  enrolments: number;
  enrolmentFailures: number;
  unenrolments: number;
  ruleRepairs: number;
}

/** Told of enrolment outcomes (metrics). */
export interface EnrollerObserver {
  enrolled(backend: string, seconds: number): void;
}

export class Enroller {
  readonly counters: EnrollerCounters = { enrolments: 0, enrolmentFailures: 0, unenrolments: 0, ruleRepairs: 0 };
  private records = new Map<string, PodRecord>();
  private live = new Map<string, Live>();
  private mutex = new KeyedMutex();
  /** Identities of pods whose enrolment is in progress: retained even before their record is stored. */
  private enrolling = new Map<string, number>();

  constructor(
    private readonly backend: RedirectBackend,
    private readonly source: WorkloadSource,
    private readonly store: StateStore,
    private readonly log: Logger,
    private readonly podLookupTimeoutMs: number,
    private readonly mesh: MeshContext,
    private readonly observer?: EnrollerObserver,
  ) {
    source.onChange((c) => this.onWorkloadChange(c));
  }

  async add(ev: CniEvent): Promise<EventVerdict> {
    const { podNamespace: ns, podName: name } = ev.k8s;
    if (!ns || !name) throw new AgentError('AMB_ERR_BAD_EVENT', 'ADD without K8S_POD_NAMESPACE/K8S_POD_NAME: not a Kubernetes pod');
    const key = recordKey(ev.containerId, ev.ifname);
    const plog = this.log.child({ pod: `${ns}/${name}`, containerId: ev.containerId.slice(0, 12) });
    return this.mutex.run(key, async () => {
      const pod = await this.source.waitForPod(ns, name, this.podLookupTimeoutMs);
      if (!pod) {
        throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${ns}/${name} is not in the workload source yet; try again later`);
      }
      if (ev.k8s.podUid && pod.uid && ev.k8s.podUid !== pod.uid) {
        throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${ns}/${name} has uid ${pod.uid} in the workload source but the runtime sent ${ev.k8s.podUid}; try again later`);
      }
      const id = statNetns(ev.netns);
      if (!id) throw new AgentError('AMB_ERR_NETNS_GONE', `network namespace ${ev.netns} of pod ${ns}/${name} does not exist (or is not a network namespace)`);
      const ips = ev.ips.length ? ev.ips.map((ip) => ip.address.split('/')[0] ?? ip.address) : await podIpsFromNetns(ev.netns);
      const decision = decideEnrolment(pod, this.source.getNamespace(ns));
      await this.dropDiscovered(ns, name);
      const prev = this.records.get(key);
      if (prev && !sameNetns(id, { inode: prev.netnsInode, dev: prev.netnsDev })) {
        // Same attachment, new sandbox namespace: forget the old one before enrolling the new.
        await this.unenrol(key, plog);
        this.records.delete(key);
      }
      const rec: PodRecord = {
        containerId: ev.containerId, ifname: ev.ifname, netnsPath: ev.netns, netnsInode: id.inode, netnsDev: id.dev,
        namespace: ns, name, uid: pod.uid || ev.k8s.podUid || '', serviceAccount: pod.serviceAccount, ips, state: decision.enrol ? 'enrolled' : 'skipped',
        reason: decision.reason, backend: this.backend.name, updatedAt: new Date().toISOString(),
      };
      if (decision.enrol) await this.enrol(key, rec, plog, { fresh: !this.records.has(key) });
      else {
        await this.unenrol(key, plog);
        plog.info({ reason: decision.reason }, 'pod not selected for the mesh');
      }
      this.records.set(key, rec);
      await this.persist();
      this.report(rec);
      return { result: decision.enrol ? 'enrolled' : 'skipped', reason: decision.reason };
    });
  }

  async del(ev: CniEvent): Promise<EventVerdict> {
    const key = recordKey(ev.containerId, ev.ifname);
    return this.mutex.run(key, async () => {
      const rec = this.records.get(key);
      if (!rec) return { result: 'removed', reason: 'attachment not known' };
      await this.unenrol(key, this.log.child({ pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId.slice(0, 12) }));
      this.records.delete(key);
      await this.persist();
      return { result: 'removed' };
    });
  }

  async check(ev: CniEvent): Promise<EventVerdict> {
    const key = recordKey(ev.containerId, ev.ifname);
    return this.mutex.run(key, async () => {
      const rec = this.records.get(key);
      const { podNamespace: ns, podName: name } = ev.k8s;
      const pod = ns && name ? this.source.getPod(ns, name) : undefined;
      const shouldEnrol = pod ? decideEnrolment(pod, this.source.getNamespace(pod.namespace)).enrol : rec?.state === 'enrolled';
      if (!shouldEnrol) return { result: 'ok', reason: 'pod is not selected for the mesh' };
      if (!rec || rec.state !== 'enrolled') throw new AgentError('AMB_ERR_NOT_ENROLLED', `pod ${ns}/${name} should be enrolled but the agent has not enrolled it`);
      const problems = await this.inspect(key, rec);
      if (problems.length) throw new AgentError('AMB_ERR_NOT_ENROLLED', `pod ${rec.namespace}/${rec.name} is not fully captured: ${problems.join('; ')}`);
      return { result: 'ok' };
    });
  }

  async gc(ev: GcEvent): Promise<EventVerdict> {
    const valid = new Set(ev.validAttachments.map((a) => recordKey(a.containerId, a.ifname)));
    let removed = 0;
    for (const key of [...this.records.keys()]) {
      if (valid.has(key)) continue;
      const rec = this.records.get(key);
      if (!rec || rec.origin === 'proc') continue; // not an attachment the runtime made through us
      await this.del({ command: 'DEL', cniVersion: ev.cniVersion, containerId: rec.containerId, ifname: rec.ifname, netns: '', args: '', k8s: {}, ips: [], network: ev.network });
      removed++;
    }
    if (removed) this.log.info({ removed }, 'garbage-collected attachments the runtime no longer has');
    return { result: 'ok', removed };
  }

  /** Re-adopts persisted pods after a restart: reopens their netns, repairs rules, re-creates listeners; drops the gone. */
  async adopt(): Promise<void> {
    const saved = this.store.load();
    await Promise.all(saved.map(async (rec) => {
      const key = recordKey(rec.containerId, rec.ifname);
      const plog = this.log.child({ pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId.slice(0, 12) });
      const id = statNetns(rec.netnsPath);
      if (!id || !sameNetns(id, { inode: rec.netnsInode, dev: rec.netnsDev })) {
        plog.info({ netns: rec.netnsPath }, 'pod sandbox gone while the agent was down; dropping it');
        if (rec.state === 'enrolled') for (const ip of probeIps(rec)) await this.backend.removeProbeTarget(ip).catch(() => undefined);
        return;
      }
      this.records.set(key, rec);
      if (rec.state !== 'enrolled') return;
      await this.mutex.run(key, () => this.enrol(key, rec, plog)).catch((err: unknown) => {
        plog.error({ error: describe(err) }, 're-adopting pod failed; its rules stay in place so its traffic is refused, not bypassed');
      });
    }));
    await this.persist();
    this.log.info({ pods: this.records.size, enrolled: this.enrolledCount() }, 'adopted pods from the state dir');
  }

  /** Keys of the enrolled attachments, for the repair loop to walk. */
  enrolledKeys(): string[] {
    return [...this.records.entries()].filter(([, r]) => r.state === 'enrolled').map(([k]) => k);
  }

  /** Verifies one enrolled pod's rules and listeners and repairs what drifted; true when it repaired something. */
  async repairOne(key: string): Promise<boolean> {
    return this.mutex.run(key, async () => {
      const rec = this.records.get(key);
      if (!rec || rec.state !== 'enrolled') return false;
      const problems = await this.inspect(key, rec);
      if (!problems.length) return false;
      const plog = this.log.child({ pod: `${rec.namespace}/${rec.name}` });
      plog.warn({ problems }, 'pod capture drifted; repairing');
      this.counters.ruleRepairs++;
      await this.enrol(key, rec, plog).catch((err: unknown) => plog.error({ error: describe(err) }, 'repair failed'));
      return true;
    });
  }

  /** True when the agent has a record (from ADD, re-adoption or discovery) of this pod. */
  knows(namespace: string, name: string): boolean {
    for (const r of this.records.values()) if (r.namespace === namespace && r.name === name) return true;
    return false;
  }

  /**
   * Enrols a pod that was already running when it became selected, whose netns was found by scanning /proc (the
   * caller verified that the namespace holds the pod's IP). Throws when enrolment fails; nothing is kept then.
   */
  async enrolDiscovered(pod: PodInfo, found: { netnsPath: string; netns: { inode: number; dev: number } }): Promise<void> {
    const key = recordKey(`proc:${pod.uid}`, 'eth0');
    const plog = this.log.child({ pod: `${pod.namespace}/${pod.name}`, podUid: pod.uid, netns: found.netnsPath });
    await this.mutex.run(key, async () => {
      if (this.knows(pod.namespace, pod.name)) return;
      const decision = decideEnrolment(pod, this.source.getNamespace(pod.namespace));
      if (!decision.enrol) return;
      const rec: PodRecord = {
        containerId: `proc:${pod.uid}`, ifname: 'eth0', netnsPath: found.netnsPath, netnsInode: found.netns.inode, netnsDev: found.netns.dev,
        namespace: pod.namespace, name: pod.name, uid: pod.uid, serviceAccount: pod.serviceAccount, ips: pod.podIPs, state: 'enrolled',
        reason: `${decision.reason} (running pod found in /proc)`, backend: this.backend.name, updatedAt: new Date().toISOString(), origin: 'proc',
      };
      await this.enrol(key, rec, plog, { fresh: false });
      this.records.set(key, rec);
      await this.persist();
      this.report(rec);
      plog.info('running pod enrolled late');
    });
  }

  /** Forgets pods found through /proc once the pod is deleted or the runtime sends an ADD for it (a new sandbox). */
  private async dropDiscovered(namespace: string, name: string): Promise<void> {
    for (const [key, rec] of [...this.records]) {
      if (rec.origin !== 'proc' || rec.namespace !== namespace || rec.name !== name) continue;
      await this.mutex.run(key, async () => {
        if (this.records.get(key) !== rec) return;
        await this.unenrol(key, this.log.child({ pod: `${namespace}/${name}` }));
        this.records.delete(key);
        await this.persist();
      });
    }
  }

  /** Publishes a record's capture state where the source keeps it (the pod's annotation with the kubernetes source). */
  private report(rec: PodRecord): void {
    this.source.reportCapture?.(rec, rec.state === 'enrolled' ? 'enabled' : undefined);
  }

  list(): PodView[] {
    return [...this.records.entries()].map(([key, rec]) => {
      const live = this.live.get(key);
      return { ...rec, listening: live?.forwarder.listening ?? false, ...(live ? { stats: live.forwarder.stats } : {}) };
    });
  }

  /** Open connections of every enrolled pod's forwarder. */
  connections(): ConnectionSnapshot[] {
    const now = Date.now();
    return [...this.live.values()].flatMap((l) => l.forwarder.connections(now));
  }

  /** Expected vs actual rules for each attachment of pod `namespace/name` (empty when the agent does not know it). */
  async rules(namespace: string, name: string): Promise<PodRulesReport[]> {
    const keys = [...this.records.entries()].filter(([, r]) => r.namespace === namespace && r.name === name).map(([k]) => k);
    return Promise.all(keys.map((key) => this.mutex.run(key, async () => {
      const rec = this.records.get(key);
      if (!rec) throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${namespace}/${name} went away`);
      const enrolled = rec.state === 'enrolled';
      const listening = this.live.get(key)?.forwarder.listening ?? false;
      const base = {
        pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId, ifname: rec.ifname, netns: rec.netnsPath, state: rec.state,
        backend: this.backend.name, expected: enrolled ? this.backend.expectedPodRules(podContext(rec)) : [], listening,
      };
      const id = statNetns(rec.netnsPath);
      if (!id || !sameNetns(id, { inode: rec.netnsInode, dev: rec.netnsDev })) {
        return { ...base, actual: [], missing: base.expected, unexpected: [], ok: false, error: `network namespace ${rec.netnsPath} is gone` };
      }
      try {
        const drift = await this.backend.verifyPod(rec.netnsPath, podContext(rec));
        // A pod that is not enrolled should have none of our rules: everything found is unexpected.
        const unexpected = enrolled ? drift.unexpected : drift.actual;
        const missing = enrolled ? drift.missing : [];
        return { ...base, actual: drift.actual, missing, unexpected, ok: missing.length === 0 && unexpected.length === 0 && (listening || !enrolled) };
      } catch (err) {
        return { ...base, actual: [], missing: [], unexpected: [], ok: false, error: `cannot read the rules: ${describe(err)}` };
      }
    })));
  }

  enrolledCount(): number {
    return [...this.records.values()].filter((r) => r.state === 'enrolled').length;
  }

  /** Closes listeners and netns handles; leaves rules in place so enrolled pods stay fail-closed. */
  async shutdown(): Promise<void> {
    await Promise.all([...this.live.values()].map(async (l) => {
      await l.forwarder.stop();
      l.netns.close();
    }));
    this.live.clear();
  }

  private async inspect(key: string, rec: PodRecord): Promise<string[]> {
    const problems: string[] = [];
    const id = statNetns(rec.netnsPath);
    if (!id || !sameNetns(id, { inode: rec.netnsInode, dev: rec.netnsDev })) return [`network namespace ${rec.netnsPath} is gone`];
    let drift: RuleDrift;
    try {
      drift = await this.backend.verifyPod(rec.netnsPath, podContext(rec));
    } catch (err) {
      return [`cannot read rules: ${describe(err)}`];
    }
    if (drift.missing.length) problems.push(`missing rules: ${drift.missing.join(' | ')}`);
    if (drift.unexpected.length) problems.push(`unexpected rules: ${drift.unexpected.join(' | ')}`);
    if (!this.live.get(key)?.forwarder.listening) problems.push('agent listeners are not open in the pod');
    return problems;
  }

  /** Installs rules, opens listeners and registers probe targets; rolls everything back on failure. */
  private async enrol(key: string, rec: PodRecord, plog: Logger, opts: { fresh?: boolean } = {}): Promise<void> {
    const identity = this.identityOf(rec);
    this.enrolling.set(identity, (this.enrolling.get(identity) ?? 0) + 1);
    try {
      await this.enrolNow(key, rec, plog, opts);
    } finally {
      const n = (this.enrolling.get(identity) ?? 1) - 1;
      if (n > 0) this.enrolling.set(identity, n);
      else this.enrolling.delete(identity);
    }
  }

  private async enrolNow(key: string, rec: PodRecord, plog: Logger, opts: { fresh?: boolean }): Promise<void> {
    const started = performance.now();
    const v6 = rec.ips.filter((ip) => !isIPv4(ip));
    if (v6.length > 0 && !this.live.has(key)) {
      plog.warn({ ipv6: v6, backend: this.backend.name }, this.backend.name === 'ebpf'
        ? 'pod has IPv6 addresses: IPv6 is not captured yet; the pod\'s IPv6 TCP is refused both ways by its tc programs (never sent around the mesh)'
        : 'pod has IPv6 addresses: IPv6 is not captured yet; the pod\'s IPv6 TCP is refused (never sent around the mesh)');
    }
    let live = this.live.get(key);
    let opened: Netns | undefined;
    try {
      if (!live) {
        opened = Netns.open(rec.netnsPath);
        if (!sameNetns(opened.id, { inode: rec.netnsInode, dev: rec.netnsDev })) throw new Error(`${rec.netnsPath} now names a different namespace`);
      }
      // Rules and probe targets are independent: install them concurrently (each is a tool exec).
      await Promise.all([
        this.backend.installPod(rec.netnsPath, podContext(rec), { fresh: opts.fresh ?? false }),
        ...probeIps(rec).map((ip) => this.backend.addProbeTarget(ip, rec.uid)),
      ]);
      if (!live && opened) {
        const forwarder = new PodForwarder(this.podSelf(opened, rec), this.mesh, plog.child({ component: 'forwarder' }));
        await forwarder.start();
        live = { netns: opened, forwarder };
        this.live.set(key, live);
      } else if (live && !live.forwarder.listening) {
        await live.forwarder.stop();
        await live.forwarder.start();
      }
    } catch (err) {
      this.counters.enrolmentFailures++;
      if (opened && !this.live.has(key)) {
        // Only from the namespace the record names: a path that now names another one (a reused PID) is left alone.
        if (sameNetns(opened.id, { inode: rec.netnsInode, dev: rec.netnsDev })) await removePodRules(rec.netnsPath, rec.ifname).catch(() => undefined);
        for (const ip of probeIps(rec)) await this.backend.removeProbeTarget(ip).catch(() => undefined);
        opened.close();
      }
      plog.error({ error: describe(err) }, 'enrolment failed');
      throw new AgentError('AMB_ERR_ENROL_FAILED', `enrolling pod ${rec.namespace}/${rec.name} failed`, { cause: err });
    }
    this.counters.enrolments++;
    const ms = performance.now() - started;
    this.observer?.enrolled(this.backend.name, ms / 1000);
    plog.info({ ips: rec.ips, backend: this.backend.name, ms: Math.round(ms) }, 'pod enrolled');
  }

  /** Removes listeners, rules (both backends) and probe targets. Succeeds when the netns is already gone. */
  private async unenrol(key: string, plog: Logger): Promise<void> {
    const rec = this.records.get(key);
    const live = this.live.get(key);
    if (!live && rec?.state !== 'enrolled') return;
    if (live) {
      await live.forwarder.stop();
      live.netns.close();
      this.live.delete(key);
    }
    if (rec) {
      // Only when the path still names the pod's namespace: a /proc/<pid> path may name another pod's (or the host's)
      // namespace once the PID is reused, and removing rules there would let that pod's traffic bypass the mesh.
      const now = statNetns(rec.netnsPath);
      if (now && sameNetns(now, { inode: rec.netnsInode, dev: rec.netnsDev })) {
        await removePodRules(rec.netnsPath, rec.ifname).catch((err: unknown) => plog.warn({ error: describe(err) }, 'removing pod rules failed'));
      }
      for (const ip of probeIps(rec)) await this.backend.removeProbeTarget(ip).catch(() => undefined);
    }
    this.counters.unenrolments++;
    plog.info('pod removed from the mesh');
  }

  /** The pod as its forwarder sees it: namespace handle, IPs, identity, and its current PeerAuthentication mode. */
  private identityOf(rec: PodRecord): string {
    return workloadIdentity(this.mesh.trustDomain, { namespace: rec.namespace, serviceAccount: rec.serviceAccount ?? 'default' });
  }

  private podSelf(ns: Netns, rec: PodRecord): PodSelf {
    const identity = this.identityOf(rec);
    const pod = (): PodInfo | undefined => this.source.getPod(rec.namespace, rec.name);
    const labels = pod()?.labels ?? {};
    return {
      ns,
      ips: rec.ips,
      identity,
      name: rec.name,
      namespace: rec.namespace,
      mtlsMode: (port) => effectiveMtlsMode(this.source.peerAuthentications(), { namespace: rec.namespace, labels: pod()?.labels ?? {} }, port),
      authorize: (source, destination) =>
        authorize(this.source.authorizationPolicies(), { source, destination: { namespace: rec.namespace, labels: pod()?.labels ?? {}, ...destination } }),
      baggage: [
        `k8s.namespace.name=${rec.namespace}`,
        `k8s.pod.name=${rec.name}`,
        `service.name=${labels.app ?? labels['app.kubernetes.io/name'] ?? rec.name}`,
        `service.version=${labels.version ?? labels['app.kubernetes.io/version'] ?? 'latest'}`,
      ].join(','),
    };
  }

  /** Identities with an enrolled pod on this node; the certificate manager drops the others. */
  private retainIdentities(): void {
    const ids = new Set<string>(this.enrolling.keys());
    for (const r of this.records.values()) if (r.state === 'enrolled') ids.add(this.identityOf(r));
    this.mesh.identities.retain(ids);
  }

  private onWorkloadChange(change: WorkloadChange): void {
    if (change.policies) {
      let closed = 0;
      for (const live of this.live.values()) closed += live.forwarder.reevaluate();
      if (closed) this.log.info({ closed }, 'policy change closed connections it now denies');
    }
    const affected = new Set<string>();
    for (const p of change.pods) if (p.after) affected.add(`${p.after.namespace}/${p.after.name}`);
    for (const p of change.pods) {
      if (p.before && !p.after) {
        this.dropDiscovered(p.before.namespace, p.before.name)
          .catch((err: unknown) => this.log.error({ pod: `${p.before?.namespace}/${p.before?.name}`, error: describe(err) }, 'releasing a pod found through /proc failed'));
      }
    }
    const nsChanged = new Set(change.namespaces.map((n) => (n.after ?? n.before)?.name));
    for (const [key, rec] of this.records) {
      if (!affected.has(`${rec.namespace}/${rec.name}`) && !nsChanged.has(rec.namespace)) continue;
      const pod = this.source.getPod(rec.namespace, rec.name);
      if (pod) void this.reevaluate(key, pod);
    }
  }

  /** Late (un)enrolment of a running pod whose labels or namespace labels changed. */
  private reevaluate(key: string, pod: PodInfo): Promise<void> {
    return this.mutex.run(key, async () => {
      const rec = this.records.get(key);
      if (!rec) return;
      const decision = decideEnrolment(pod, this.source.getNamespace(pod.namespace));
      const want = decision.enrol ? 'enrolled' : 'skipped';
      if (want === rec.state) return;
      const plog = this.log.child({ pod: `${rec.namespace}/${rec.name}` });
      try {
        if (decision.enrol) await this.enrol(key, rec, plog);
        else await this.unenrol(key, plog);
        rec.state = want;
        rec.reason = decision.reason;
        rec.updatedAt = new Date().toISOString();
        await this.persist();
        this.report(rec);
      } catch (err) {
        plog.error({ error: describe(err) }, 'late enrolment change failed');
        if (decision.enrol) this.source.reportCapture?.(rec, 'pending');
      }
    });
  }

  private persist(): Promise<void> {
    this.retainIdentities();
    return this.store.save([...this.records.values()]);
  }
}

/** What a backend needs of a pod: its interface (where ebpf programs sit) and its addresses. */
function podContext(rec: PodRecord): PodContext {
  return { ifname: rec.ifname, ips: rec.ips };
}

/** The pod IPs kubelet probes are SNATed for: IPv4 only (the probe SNAT and its set are IPv4). */
function probeIps(rec: Pick<PodRecord, 'ips'>): string[] {
  return rec.ips.filter((ip) => isIPv4(ip));
}

/** The pod's IPv4 addresses, read from its namespace (an ADD without prevResult IPs); IPv4 only, as capture is. */
async function podIpsFromNetns(netnsPath: string): Promise<string[]> {
  return (await netnsAddresses(netnsPath)).filter((a) => isIPv4(a));
}
