// Every attachment the agent knows: its record, its open netns handle and forwarder, and the two moves on one (enrol,
// unenrol). The command modules (cni-commands, adoption, late-enrolment) run these under the attachment's lock.
import { AgentError, describe, settleAll } from '../errors.js';
import { PodForwarder, type MeshContext, type PodSelf } from '../forwarder/pod-forwarder.js';
import type { HandedByPod } from '../handover/listener-transfer.js';
import type { Logger } from '../log.js';
import { Netns, sameNetns, statNetns, type NetnsId } from '../platform/netns.js';
import { authorize } from '../policy/authorization.js';
import { effectiveMtlsMode } from '../policy/peer-authentication.js';
import { REDIRECT_MODES, type RedirectMode } from '../config.js';
import { removeBackendPodRules, removePodRules } from '../redirect/backend.js';
import type { PodContext, RedirectBackend, RuleDrift } from '../redirect/types.js';
import { canonicalIp, ipFamily } from '../protocol/address.js';
import { KeyedMutex } from '../registry/keyed-mutex.js';
import type { PodRecord, StateStore } from '../registry/state-store.js';
import { workloadIdentity } from '../workload/directory.js';
import type { WorkloadSource } from '../workload/source.js';
import type { PodInfo } from '../workload/types.js';
import { checkCaptureFamilies } from './capture-families.js';
import type { EnrollerCounters, EnrollerObserver } from './enroller-counters.js';
import { LeftRulesMemory } from './left-rules.js';
import { RuntimeDeletes } from './runtime-deletes.js';

/** How long persistSoon waits: the repair loop proves pods one at a time, spread over its interval. */
const PERSIST_SOON_MS = 1000;

export interface Live {
  netns: Netns;
  forwarder: PodForwarder;
}

/**
 * How enrol() treats the attachment. `fresh`: nothing of ours is in the namespace (installPod may skip reading it);
 * `netns`: the event's handle; `enrolled`: the record was already enrolled (re-adoption, repair), and
 * `keepRulesOnFailure`: rules were already in place before this attempt (a DEL left them): either way a failure keeps the
 * rules (refused, never in clear) instead of rolling them back. `probeTargets`: the node's probe sets as read before a
 * batch (re-adoption): a pod address already there is not added again.
 */
export interface EnrolOptions {
  fresh?: boolean;
  netns?: Netns;
  enrolled?: boolean;
  keepRulesOnFailure?: boolean;
  probeTargets?: ReadonlySet<string>;
}

/** A handle on a record's sandbox for one piece of work; release() closes it when it was opened for that work. */
export interface Sandbox {
  ns: Netns;
  release(): void;
}

/**
 * True when `id` is the namespace the record was made for. Without `id`: when the record's path still names it (a
 * /proc/<pid> path names another pod's, or the host's, namespace once the PID is reused).
 */
export function sameSandbox(rec: PodRecord, id: NetnsId | undefined = statNetns(rec.netnsPath)): boolean {
  return id !== undefined && sameNetns(id, { inode: rec.netnsInode, dev: rec.netnsDev });
}

/** Opens the record's namespace through its path; undefined when the path names no namespace, or another one. */
export function openSandbox(rec: PodRecord): Netns | undefined {
  let ns: Netns;
  try {
    ns = Netns.open(rec.netnsPath);
  } catch {
    return undefined;
  }
  if (sameSandbox(rec, ns.id)) return ns;
  ns.close();
  return undefined;
}

/**
 * Removes a record's in-pod redirection pieces from its sandbox (un-enrolment of a running pod, a failed enrolment's
 * roll-back, rules a DEL left in a namespace an ADD now re-uses; never DEL itself); `running` is the agent's backend. The default removes every backend's (removePodRules: iptables, nftables and eBPF
 * pieces alike, loading the eBPF bindings); the agent passes removeOwnBackendsRules (the record's and the running one's).
 */
export type PodRuleRemover = (ns: Netns, rec: PodRecord, running: RedirectMode) => Promise<void>;

export const removeEveryBackendsRules: PodRuleRemover = (ns, rec) => removePodRules(ns, rec.ifname);

/**
 * The backends whose pieces removeOwnBackendsRules removes: the one the record says the pod was enrolled with and the
 * running one (re-adoption after a switch of --redirect installs the running backend's beside the record's, and the
 * record keeps its first backend); undefined (every backend's) when the record names none it knows (older agents). Pure.
 */
export function ownBackends(rec: Pick<PodRecord, 'backend'>, running: RedirectMode): RedirectMode[] | undefined {
  if (!REDIRECT_MODES.includes(rec.backend as RedirectMode)) return undefined;
  return rec.backend === running ? [running] : [rec.backend as RedirectMode, running];
}

/**
 * Removes only the rules of the record's backend and the running one (an un-enrolment then runs one backend's tools,
 * not three); every backend's when the record names none it knows. Throws when a removal fails (unenrol logs it).
 */
export const removeOwnBackendsRules: PodRuleRemover = (ns, rec, running) => {
  const modes = ownBackends(rec, running);
  return modes ? removeBackendPodRules(modes, ns, rec.ifname) : removeEveryBackendsRules(ns, rec, running);
};

/** What a backend needs of a pod: its interface (where ebpf programs sit) and its addresses. */
export function podContext(rec: PodRecord): PodContext {
  return { ifname: rec.ifname, ips: rec.ips };
}

/** The pod IPs kubelet probes are SNATed for: every address, of both families (the backend puts each in its family's set). */
export function probeIps(rec: Pick<PodRecord, 'ips'>): string[] {
  return rec.ips.filter((ip) => ipFamily(ip) !== undefined);
}

/** An enrolment refused because the backend captures none of the pod's address families (capture-families.ts). */
export class CaptureFamilyRefusal extends AgentError {}

export class Attachments {
  readonly counters: EnrollerCounters = { enrolments: 0, enrolmentFailures: 0, unenrolments: 0, ruleRepairs: 0, captureRefusals: 0 };
  readonly records = new Map<string, PodRecord>();
  readonly live = new Map<string, Live>();
  readonly mutex = new KeyedMutex();
  /** Namespaces whose rules a DEL left in place: an ADD into one of them is not fresh (left-rules.ts). */
  readonly leftRules = new LeftRulesMemory();
  /** Identities of pods whose enrolment is in progress: retained even before their record is stored. */
  private enrolling = new Map<string, number>();
  /**
   * While a successor adopts pods (Enroller.adopt): the predecessor's listeners, which a pod's new forwarder takes (its
   * entry removed) instead of binding; and whether new ones are SO_REUSEPORT (beside an older predecessor's).
   */
  adoptListeners: { handed: HandedByPod; reusePort: boolean } | undefined;

  constructor(
    readonly backend: RedirectBackend,
    readonly source: WorkloadSource,
    private readonly store: StateStore,
    readonly log: Logger,
    readonly podLookupTimeoutMs: number,
    private readonly mesh: MeshContext,
    private readonly observer?: EnrollerObserver,
    private readonly removeRules: PodRuleRemover = removeEveryBackendsRules,
  ) {}

  /** Pods the runtime DELeted: late enrolment does not look for them (runtime-deletes.ts). */
  readonly runtimeDeletes = new RuntimeDeletes();

  /** True when the agent has a record (from ADD, re-adoption or discovery) of this pod. */
  knows(namespace: string, name: string): boolean {
    for (const r of this.records.values()) if (r.namespace === namespace && r.name === name) return true;
    return false;
  }

  /** Whether a record of the pod with this uid is held (another sandbox of it). */
  holdsUid(uid: string): boolean {
    for (const r of this.records.values()) if (r.uid === uid) return true;
    return false;
  }

  /**
   * The record's sandbox, or undefined when it is gone: the attachment's live handle while the record's path still
   * names it, the event's own handle when it is that namespace, else one opened now.
   */
  sandbox(rec: PodRecord, known: { live?: Netns | undefined; event?: Netns | undefined }): Sandbox | undefined {
    const keep = (ns: Netns): Sandbox => ({ ns, release: () => undefined });
    if (known.live) return sameSandbox(rec) ? keep(known.live) : undefined;
    if (known.event && sameSandbox(rec, known.event.id)) return keep(known.event);
    const ns = openSandbox(rec);
    return ns ? { ns, release: () => ns.close() } : undefined;
  }

  /** Closes an event's handle unless enrolment kept it as the attachment's live one. */
  release(key: string, eventNs: Netns): void {
    if (this.live.get(key)?.netns !== eventNs) eventNs.close();
  }

  /** What is wrong with an enrolled pod's capture (rules, listeners); empty when nothing is. */
  async inspect(key: string, rec: PodRecord): Promise<string[]> {
    const problems: string[] = [];
    const sandbox = this.sandbox(rec, { live: this.live.get(key)?.netns });
    if (!sandbox) return [`network namespace ${rec.netnsPath} is gone`];
    let drift: RuleDrift;
    try {
      drift = await this.backend.verifyPod(sandbox.ns, podContext(rec));
    } catch (err) {
      return [`cannot read rules: ${describe(err)}`];
    } finally {
      sandbox.release();
    }
    // Proved exact now, or no longer proved: a drift disproves the record, so the repair after it reads and writes in full.
    if (drift.seen) rec.rulesSeen = drift.seen;
    else delete rec.rulesSeen;
    if (drift.missing.length) problems.push(`missing rules: ${drift.missing.join(' | ')}`);
    if (drift.unexpected.length) problems.push(`unexpected rules: ${drift.unexpected.join(' | ')}`);
    // A pod kept refused (keptRefused) has no listener by design: its rules alone are checked.
    if (!this.live.get(key)?.forwarder.listening && !this.keptRefused.has(key)) problems.push('agent listeners are not open in the pod');
    return problems;
  }

  /**
   * Installs rules, opens listeners and registers probe targets; rolls everything back on failure. `netns`: the event's
   * handle on the record's namespace (checked against the record here); without it the record's path is opened. A new
   * attachment keeps the handle as its live one (the caller then leaves it open: see release()).
   *
   * `enrolled`: the record was already enrolled (re-adoption after a restart or take-over, the repair loop). The
   * capture-family refusal applies to new enrolments only (ADD, late enrolment): an enrolled pod is never dropped from
   * the mesh by it; its rules are put back so whatever the backend cannot capture stays refused (fail closed), and a pod
   * the backend captures none of the families of (an IPv6-only pod after a restart with --capture-ipv6 false) gets its
   * rules only, no listener: it is kept refused (keptRefused), said once, not retried by every repair pass.
   */
  async enrol(key: string, rec: PodRecord, plog: Logger, opts: EnrolOptions = {}): Promise<void> {
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

  private async enrolNow(key: string, rec: PodRecord, plog: Logger, opts: EnrolOptions): Promise<void> {
    const started = performance.now();
    // The one family decision (capture-families.ts): a new enrolment is refused when the backend captures none of the
    // pod's families (the directory already lists none of its addresses as mesh workloads: see meshWorkloads).
    const families = checkCaptureFamilies(rec.ips, this.backend);
    const captures = this.backend.captureFamilies;
    if (!families.ok && !opts.enrolled) {
      this.counters.enrolmentFailures++;
      this.counters.captureRefusals++;
      plog.error({ ips: rec.ips, backend: this.backend.name, captures }, `enrolment refused: ${families.reason}`);
      throw new CaptureFamilyRefusal('AMB_ERR_ENROL_FAILED', `enrolling pod ${rec.namespace}/${rec.name} failed: ${families.reason}`);
    }
    if (!families.ok) {
      await this.keepRefused(rec, plog, opts.netns);
      if (!this.keptRefused.has(key)) {
        this.keptRefused.add(key);
        plog.error({ ips: rec.ips, backend: this.backend.name, captures }, `enrolled pod kept with its rules and no listener: ${families.reason}; its TCP stays refused until it is re-created`);
      }
      return;
    }
    if (families.uncaptured.length > 0 && !this.live.has(key)) {
      plog.warn({ uncaptured: families.uncaptured, backend: this.backend.name, captures }, this.backend.name === 'ebpf'
        ? 'pod has addresses of a family the backend does not capture yet: their TCP is refused both ways by its tc programs (never sent around the mesh)'
        : 'pod has addresses of a family the backend does not capture yet: their TCP is refused (never sent around the mesh)');
    }
    let live = this.live.get(key);
    let opened: Netns | undefined;
    try {
      let ns: Netns;
      if (live) ns = live.netns;
      else {
        ns = opened = opts.netns ?? Netns.open(rec.netnsPath);
        if (!sameSandbox(rec, opened.id)) throw new Error(`${rec.netnsPath} now names a different namespace`);
      }
      await this.putRules(ns, rec, opts);
      if (!live && opened) {
        const forwarder = new PodForwarder(this.podSelf(opened, rec), this.mesh, plog.child({ component: 'forwarder' }));
        const handed = this.adoptListeners?.handed.get(key);
        this.adoptListeners?.handed.delete(key);
        await forwarder.start(handed, this.adoptListeners?.reusePort ?? false);
        live = { netns: opened, forwarder };
        this.live.set(key, live);
      } else if (live && !live.forwarder.listening) {
        await live.forwarder.stop();
        await live.forwarder.start();
      }
    } catch (err) {
      this.counters.enrolmentFailures++;
      if (opened && !this.live.has(key)) {
        // A new enrolment is rolled back. An enrolled pod's (re-adoption, repair), or one whose rules a DEL had left
        // (keepRulesOnFailure), keeps its rules and probe targets: its traffic stays captured and refused (no listener)
        // until a repair or a retried ADD succeeds, never sent around the mesh meanwhile.
        // Only from the namespace the record names: a path that now names another one (a reused PID) is left alone.
        if (!opts.enrolled && !opts.keepRulesOnFailure) {
          if (sameSandbox(rec, opened.id)) await this.removeRules(opened, rec, this.backend.name).catch(() => undefined);
          for (const ip of probeIps(rec)) await this.backend.removeProbeTarget(ip).catch(() => undefined);
        }
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

  /** Enrolled pods kept with their rules and no listener, the backend capturing none of their families (see enrol). */
  private readonly keptRefused = new Set<string>();

  /**
   * The pod's rules and probe targets (those not in `probeTargets` already), concurrently: each is a tool exec. Both
   * finish before a failure is thrown (settleAll), so a tool still running cannot put back what a roll-back removed.
   */
  private async putRules(ns: Netns, rec: PodRecord, opts: Pick<EnrolOptions, 'fresh' | 'probeTargets'>): Promise<void> {
    await settleAll([
      // The record says where its rules were last proved exact; the install says where they are now (or nothing).
      this.backend.installPod(ns, podContext(rec), { fresh: opts.fresh ?? false, seen: rec.rulesSeen }).then((seen) => {
        if (seen) rec.rulesSeen = seen;
        else delete rec.rulesSeen;
      }),
      ...probeIps(rec).filter((ip) => !opts.probeTargets?.has(canonicalIp(ip) ?? ip)).map((ip) => this.backend.addProbeTarget(ip, rec.uid)),
    ], `installing the rules of pod ${rec.namespace}/${rec.name} failed in several steps`);
  }

  /** Puts back the rules and probe targets of a pod kept refused (enrol); its namespace is opened for this only. */
  private async keepRefused(rec: PodRecord, plog: Logger, netns?: Netns): Promise<void> {
    const ns = netns ?? Netns.open(rec.netnsPath);
    try {
      if (!sameSandbox(rec, ns.id)) throw new Error(`${rec.netnsPath} now names a different namespace`);
      await this.putRules(ns, rec, {});
    } catch (err) {
      this.counters.enrolmentFailures++;
      plog.error({ error: describe(err) }, 'putting back the rules of a pod kept refused failed');
      throw new AgentError('AMB_ERR_ENROL_FAILED', `enrolling pod ${rec.namespace}/${rec.name} failed`, { cause: err });
    } finally {
      if (!netns) ns.close();
    }
  }

  /**
   * Takes a pod out of the mesh: closes its listeners (and forwarder), removes its probe targets (node state) and, unless
   * `podRules` is 'leave', its in-pod rules (those the PodRuleRemover removes). Succeeds when the netns is already gone.
   * `eventNs`: the event's handle, used when it is the record's namespace.
   *
   * 'leave' is DEL's (and GC's): the runtime is tearing the sandbox down and the rules die with its namespace, as
   * Istio's agent does; nothing is run in the pod. While the namespace lives on, the rules still send the pod's TCP to
   * the agent's ports, where nothing listens any more: refused (eBPF: dropped), never carried in clear. The namespace is
   * remembered (leftRules) so that an ADD into it reads and replaces what is there instead of writing blind.
   */
  async unenrol(key: string, plog: Logger, opts: { eventNs?: Netns | undefined; podRules?: 'remove' | 'leave' } = {}): Promise<void> {
    const rec = this.records.get(key);
    const live = this.live.get(key);
    this.keptRefused.delete(key);
    if (!live && rec?.state !== 'enrolled') return;
    if (live) {
      await live.forwarder.stop();
      this.live.delete(key);
    }
    try {
      if (rec && opts.podRules === 'leave') {
        this.leftRules.remember({ inode: rec.netnsInode, dev: rec.netnsDev }, { containerId: rec.containerId, backend: rec.backend, ifname: rec.ifname });
      } else if (rec) {
        // Only while the path still names the pod's namespace: once a /proc/<pid> path names another pod's (or the
        // host's) namespace, removing rules there would let that pod's traffic bypass the mesh.
        const sandbox = this.sandbox(rec, { live: live?.netns, event: opts.eventNs });
        if (sandbox) {
          await this.removeRules(sandbox.ns, rec, this.backend.name).catch((err: unknown) => plog.warn({ error: describe(err) }, 'removing pod rules failed'));
          sandbox.release();
        }
      }
      if (rec) await Promise.all(probeIps(rec).map((ip) => this.backend.removeProbeTarget(ip).catch(() => undefined)));
    } finally {
      live?.netns.close();
    }
    this.counters.unenrolments++;
    plog.info('pod removed from the mesh');
  }

  /** Whether an attachment's listeners are open in namespace `id` (another interface of the same pod, or a discovered pod). */
  listensIn(id: NetnsId): boolean {
    for (const live of this.live.values()) if (sameNetns(live.netns.id, id)) return true;
    return false;
  }

  /**
   * Before an ADD into `ns`: what a DEL left there is removed when the pod is not enrolled now (its traffic must not stay
   * refused), or when another backend installed it (the running one replaces only its own); the namespace is then
   * forgotten. Throws when the removal fails (the ADD fails: the runtime retries it). `rec`: the ADD's record.
   */
  async clearLeftRules(ns: Netns, rec: PodRecord, enrol: boolean): Promise<void> {
    const left = this.leftRules.get(ns.id, rec.containerId);
    if (!left || (enrol && left.backend === this.backend.name)) return;
    try {
      await this.removeRules(ns, { ...rec, backend: left.backend, ifname: left.ifname }, this.backend.name);
    } catch (err) {
      throw new AgentError('AMB_ERR_ENROL_FAILED', `removing the rules a DEL left in the namespace of pod ${rec.namespace}/${rec.name} failed`, { cause: err });
    }
    this.leftRules.forget(ns.id);
  }

  /** Publishes a record's capture state where the source keeps it (the pod's annotation with the kubernetes source). */
  report(rec: PodRecord): void {
    this.source.reportCapture?.(rec, rec.state === 'enrolled' ? 'enabled' : undefined);
  }

  /** Set while a take-over is in progress (Enroller.quiesce): the successor owns the state file, nothing is written. */
  sealed = false;

  /** Pending persistSoon write. */
  private persistTimer: NodeJS.Timeout | undefined;

  /**
   * Writes the records within PERSIST_SOON_MS, once for every call until then: the repair loop's new proofs of pods'
   * rules (rulesSeen), which no event waits on, cost one write for a pass's worth instead of one each. Unref'd: a stop
   * before it fires loses only proofs, and a pod without one is re-adopted by a full read-back.
   */
  persistSoon(): void {
    if (this.persistTimer) return;
    this.persistTimer = setTimeout(() => {
      this.persistTimer = undefined;
      this.persist().catch((err: unknown) => this.log.warn({ error: describe(err) }, 'writing pod records failed'));
    }, PERSIST_SOON_MS);
    this.persistTimer.unref();
  }

  persist(): Promise<void> {
    if (this.sealed) return Promise.reject(new Error('pod records are not written while handing over to another agent (it owns the state dir)'));
    this.retainIdentities();
    return this.store.save([...this.records.values()]);
  }

  private identityOf(rec: PodRecord): string {
    return workloadIdentity(this.mesh.trustDomain, { namespace: rec.namespace, serviceAccount: rec.serviceAccount ?? 'default' });
  }

  /** The pod as its forwarder sees it: namespace handle, IPs, identity, and its current PeerAuthentication mode. */
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
}
