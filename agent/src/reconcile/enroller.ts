// Pod enrolment's one entry point: the plugin's commands, re-adoption and repair, late enrolment, and the views of
// what is enrolled. The work lives in cni-commands.ts, adoption.ts and late-enrolment.ts over attachments.ts.
import type { ConnectionSnapshot } from '../forwarder/connections.js';
import type { ForwarderStats, MeshContext, MovableRelay } from '../forwarder/pod-forwarder.js';
import type { RelayMeta } from '../handover/protocol.js';
import type { ListenerKind } from '../handover/listener-protocol.js';
import { closeHanded, type HandedByPod } from '../handover/listener-transfer.js';
import { closeAll } from '../platform/fd-passing.js';
import type { Logger } from '../log.js';
import type { CniEvent, EventVerdict, GcEvent } from '../protocol/cni-event.js';
import type { RedirectBackend } from '../redirect/types.js';
import type { PodRecord, StateStore } from '../registry/state-store.js';
import type { WorkloadSource } from '../workload/source.js';
import type { PodInfo } from '../workload/types.js';
import { adopt, enrolledKeys, podRules, repairOne, type PodRulesReport } from './adoption.js';
import { Attachments, type PodRuleRemover } from './attachments.js';
import { cniAdd, cniCheck, cniDel, cniGc } from './cni-commands.js';
import type { EnrollerCounters, EnrollerObserver } from './enroller-counters.js';
import { enrolDiscovered, onWorkloadChange, reevaluatePolicies } from './late-enrolment.js';

export type { EnrollerCounters, EnrollerObserver, PodRuleRemover, PodRulesReport };

export interface PodView extends PodRecord {
  listening: boolean;
  stats?: ForwarderStats;
}

/** Holds every attachment's record, its open netns handle and its forwarder; all work on one attachment is serialised. */
export class Enroller {
  readonly counters: EnrollerCounters;
  private readonly attachments: Attachments;

  constructor(
    backend: RedirectBackend,
    source: WorkloadSource,
    private readonly store: StateStore,
    private readonly log: Logger,
    podLookupTimeoutMs: number,
    mesh: MeshContext,
    observer?: EnrollerObserver,
    removeRules?: PodRuleRemover,
  ) {
    this.attachments = new Attachments(backend, source, store, log, podLookupTimeoutMs, mesh, observer, removeRules);
    this.counters = this.attachments.counters;
    source.onChange((c) => {
      // Policies are enforced on open connections in every state (fail closed): only (un)enrolment waits for the successor.
      if (this.frozen) reevaluatePolicies(this.attachments, c);
      else onWorkloadChange(this.attachments, c);
    });
  }

  /**
   * While frozen (a take-over in progress) workload changes enrol and unenrol nothing: the successor acts on them.
   * Policy changes still close the open connections they now deny.
   */
  private frozen = false;

  freeze(): void {
    this.frozen = true;
  }

  /**
   * After freeze() and once no new work can start (plugin events held, repair and discovery stopped): waits for the work
   * on attachments already running (late enrolment started before the freeze), then refuses to write records until thaw().
   */
  async quiesce(): Promise<void> {
    await this.attachments.mutex.idle();
    this.attachments.sealed = true;
  }

  thaw(): void {
    this.attachments.sealed = false;
    this.frozen = false;
  }

  /** Open relays and relays opened so far, over every enrolled pod: what a take-over's drain counts. */
  relayCounts(): { open: number; opened: number } {
    let open = 0;
    let opened = 0;
    for (const l of this.attachments.live.values()) {
      open += l.forwarder.openRelays;
      opened += l.forwarder.stats.outbound.opened + l.forwarder.stats.inbound.opened;
    }
    return { open, opened };
  }

  /** Plain TCP relays of every enrolled pod that a take-over may hand to the successor, with the pod's key. */
  movableRelays(): { pod: string; relay: MovableRelay }[] {
    return [...this.attachments.live.entries()].flatMap(([pod, l]) => l.forwarder.movableRelays().map((relay) => ({ pod, relay })));
  }

  /** True when the relay's pod has a forwarder here that can take it (see relayAdoptable). */
  canAdoptRelay(meta: Pick<RelayMeta, 'pod' | 'direction' | 'policy'>): boolean {
    return this.attachments.live.get(meta.pod)?.forwarder.canAdoptRelay(meta) ?? false;
  }

  /** Carries on a relay a predecessor handed over (see PodForwarder.adoptRelay); throws when the pod is not here. */
  adoptRelay(meta: RelayMeta, downFd: number, upFd: number): void {
    const live = this.attachments.live.get(meta.pod);
    if (!live) {
      closeAll([downFd, upFd]);
      throw new Error(`pod ${meta.pod} is not enrolled here`);
    }
    live.forwarder.adoptRelay(meta, downFd, upFd);
  }

  /** Every enrolled pod's listening sockets, with the pod's key: what a take-over hands to the successor before `released`. */
  listenerFds(): { pod: string; kind: ListenerKind; fd: number }[] {
    return [...this.attachments.live.entries()].flatMap(([pod, l]) => l.forwarder.listenerFds().map((x) => ({ pod, ...x })));
  }

  /**
   * A take-over's hand-off: this agent closes its copies of every pod's listening sockets (the successor holds the same
   * sockets and accepts what is queued), open relays go on.
   */
  async stopAccepting(): Promise<void> {
    await Promise.all([...this.attachments.live.values()].map((l) => l.forwarder.stopAccepting()));
  }

  add(ev: CniEvent): Promise<EventVerdict> {
    return this.pluginEvent(() => cniAdd(this.attachments, ev));
  }

  del(ev: CniEvent): Promise<EventVerdict> {
    return this.pluginEvent(() => cniDel(this.attachments, ev));
  }

  check(ev: CniEvent): Promise<EventVerdict> {
    return this.pluginEvent(() => cniCheck(this.attachments, ev));
  }

  gc(ev: GcEvent): Promise<EventVerdict> {
    return this.pluginEvent(() => cniGc(this.attachments, ev));
  }

  /** Plugin commands in progress, and who waits for none to be (see quiet()). */
  private pluginEvents = 0;
  private quietWaiters = new Set<() => void>();

  private async pluginEvent<T>(work: () => Promise<T>): Promise<T> {
    this.pluginEvents++;
    try {
      return await work();
    } finally {
      if (--this.pluginEvents === 0) {
        for (const wake of this.quietWaiters) wake();
        this.quietWaiters.clear();
      }
    }
  }

  /**
   * Resolves when no plugin command (ADD, DEL, CHECK, GC) is in progress, at once when none is, and at the latest after
   * `maxWaitMs`: background work (the repair loop's tool execs) gives way to the runtime's commands during a burst.
   */
  quiet(maxWaitMs: number): Promise<void> {
    if (this.pluginEvents === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.quietWaiters.delete(done);
        resolve();
      };
      const timer = setTimeout(done, maxWaitMs);
      this.quietWaiters.add(done);
    });
  }

  /**
   * Re-adopts persisted pods after a restart: reopens their netns, repairs rules, re-creates listeners; drops the gone.
   * `listeners` (a take-over): the predecessor's listening sockets to carry on with, and whether new ones are
   * SO_REUSEPORT; those no pod took are closed here (the predecessor's copies close at its hand-off).
   */
  async adopt(listeners?: { handed: HandedByPod; reusePort: boolean }): Promise<void> {
    this.attachments.adoptListeners = listeners;
    try {
      await adopt(this.attachments, this.store.load());
    } finally {
      this.attachments.adoptListeners = undefined;
      const unused = listeners ? closeHanded(listeners.handed) : 0;
      if (unused > 0) this.log.warn({ unused }, 'listeners handed over by the predecessor that no adopted pod took: closed');
    }
  }

  /** Keys of the enrolled attachments, for the repair loop to walk. */
  enrolledKeys(): string[] {
    return enrolledKeys(this.attachments);
  }

  /** Verifies one enrolled pod's rules and listeners and repairs what drifted; true when it repaired something. */
  repairOne(key: string): Promise<boolean> {
    return repairOne(this.attachments, key);
  }

  /** True when the agent has a record (from ADD, re-adoption or discovery) of this pod. */
  knows(namespace: string, name: string): boolean {
    return this.attachments.knows(namespace, name);
  }

  /** When late enrolment stops leaving the pod alone after the runtime DELeted it (runtime-deletes.ts); undefined: it does not. */
  leftAloneUntil(pod: PodInfo): number | undefined {
    return this.attachments.runtimeDeletes.leftAloneUntil(pod);
  }

  /** Enrols a running pod whose netns was found by scanning /proc; throws when enrolment fails (nothing is kept then). */
  enrolDiscovered(pod: PodInfo, found: { netnsPath: string; netns: { inode: number; dev: number } }): Promise<void> {
    return enrolDiscovered(this.attachments, pod, found);
  }

  /** Expected vs actual rules for each attachment of pod `namespace/name` (empty when the agent does not know it). */
  rules(namespace: string, name: string): Promise<PodRulesReport[]> {
    return podRules(this.attachments, namespace, name);
  }

  list(): PodView[] {
    return [...this.attachments.records.entries()].map(([key, rec]) => {
      const live = this.attachments.live.get(key);
      return { ...rec, listening: live?.forwarder.listening ?? false, ...(live ? { stats: live.forwarder.stats } : {}) };
    });
  }

  /** Open connections of every enrolled pod's forwarder. */
  connections(): ConnectionSnapshot[] {
    const now = Date.now();
    return [...this.attachments.live.values()].flatMap((l) => l.forwarder.connections(now));
  }

  enrolledCount(): number {
    return this.enrolledKeys().length;
  }

  /** Closes listeners and netns handles; leaves rules in place so enrolled pods stay fail-closed. */
  async shutdown(): Promise<void> {
    const live = this.attachments.live;
    await Promise.all([...live.values()].map(async (l) => {
      await l.forwarder.stop();
      l.netns.close();
    }));
    live.clear();
  }
}
