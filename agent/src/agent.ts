// The node agent's lifecycle: wires config, workload source, redirection backend, enroller and event server, in order.
// Start order matters: node rules and re-adoption finish before the socket reports ready, so no ADD races a half-started agent.
// Agent.create loads only the chosen implementations (workload source, redirection backend, CA): see create().
// Upgrades: start() takes the state dir's locks, or takes over from the agent holding them (handover/); that agent's
// side (freeze, hand off, drain) is predecessorHooks().
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentConfig } from './config.js';
import { describe } from './errors.js';
import type { Logger } from './log.js';
import type { AgentStatus } from './protocol/cni-event.js';
import { probeIps, removeOwnBackendsRules } from './reconcile/attachments.js';
import { Enroller } from './reconcile/enroller.js';
import { RunningPods } from './reconcile/running-pods.js';
import { createBackend, type RedirectBackend } from './redirect/backend.js';
import { StateStore } from './registry/state-store.js';
import { EventServer } from './server/event-server.js';
import { createWorkloadSource } from './workload/create-source.js';
import type { WorkloadSource } from './workload/source.js';
import { sameNetns, selfNetns } from './platform/netns.js';
import { probeSourcePreservation } from './platform/source-probe.js';
import { releaseMemoryLater } from './platform/memory.js';
import type { CertificateAuthority } from './identity/ca.js';
import { CertManager } from './identity/cert-manager.js';
import { x509Util } from './identity/x509-lazy.js';
import { NativeHbone } from './hbone/native.js';
import { WorkloadDirectory } from './workload/directory.js';
import { AgentMetrics } from './admin/metrics.js';
import { AdminServer } from './admin/admin-server.js';
import { malformedPolicies } from './policy/malformed.js';
import { lockHolder, tryLock, type HeldLock } from './platform/state-lock.js';
import {
  AGENT_LOCK_FILE, HANDOVER_LOCK_FILE, RELAY_HANDOVER_VERSION, RELAY_LIMITS, TakeOverError, drainTally, newHandoverToken, refusalReason, relayInboxPath,
  startPlan, type DrainTally, type HandoverMessage,
} from './handover/protocol.js';
import { requestTakeOver, servePredecessor, type HandoverChannel, type PredecessorHooks } from './handover/session.js';
import { RelayInbox, sendRelays } from './handover/relay-transfer.js';
import {
  LISTENER_LIMITS, listenerDecision, listenerInboxPath, listenerProblem, type ListenerInboxTally, type ListenerMeta,
} from './handover/listener-protocol.js';
import { ListenerInbox, closeHanded, sendListeners, type HandedByPod } from './handover/listener-transfer.js';
import { listenerFacts } from './platform/sockets.js';
import { recordKey, type PodRecord } from './registry/state-store.js';

/** Hooks main.ts gives the agent: a fatal failure while running, and the end of a take-over's drain (exit 0). */
export interface AgentHooks {
  onFatal?: (err: Error) => void;
  onHandedOver?: (tally: DrainTally) => void;
  /** A stop deferred during a take-over (see deferStop) is due: the successor went away before it was ready. */
  onDeferredStop?: () => void;
}

/** How long a successor waits for the running agent to answer, and then to freeze and release the state dir. */
const TAKEOVER_TIMEOUT_MS = 30_000;
/** Slack on the predecessor's own bounds (its hand-off, relay moves and drain) before a successor stops listening to it. */
const PREDECESSOR_SLACK_MS = 60_000;
/** How often a wait that has no bound of its own is logged. */
const NOTICE_MS = 30_000;
/** How often a drain looks at the open connections. */
const DRAIN_POLL_MS = 250;

export class Agent {
  private readonly backend: RedirectBackend;
  private readonly source: WorkloadSource;
  private readonly enroller: Enroller;
  private readonly runningPods: RunningPods;
  private readonly server: EventServer;
  private readonly identities: CertManager;
  /** Carries HBONE: the outbound pool and every pod's 15008 (the native relay on its own thread). */
  private readonly hbone: NativeHbone;
  private readonly directory: WorkloadDirectory;
  private readonly metrics: AgentMetrics;
  private readonly admin: AdminServer;
  /** The CA opens asynchronously (the builtin one reads or creates its root); start() waits for it. */
  private readonly caReady: Promise<CertificateAuthority>;
  private ready = false;
  private notReadyReason = 'starting';
  /** How long each start-up step took, ms, by its not-ready reason (the `agent ready` line logs them): where a slow start went. */
  private readonly startSteps: Record<string, number> = {};
  private stepStarted = 0;
  private repairLoop: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  /** Set while stopRepairLoop() waits for the loop to end. */
  private repairPaused = false;
  private markReady!: () => void;
  private readonly readyPromise = new Promise<void>((resolve) => (this.markReady = resolve));
  /** agent.lock: held while this agent may change rules and records. */
  private agentLock: HeldLock | undefined;
  /** handover.lock: held while starting, and as a successor until the predecessor has exited. */
  private handoverLock: HeldLock | undefined;
  /** Set from a successor's `begin` on: this agent changes nothing more (unless the successor goes away first). */
  private handingOver = false;
  /** A SIGTERM arrived while handing over: exit after the drain, or stop as usual if the take-over is abandoned. */
  private stopDeferred = false;
  private readonly store: StateStore;
  /** As a predecessor: plain TCP relays handed to the successor (logged with the drain). */
  private movedRelays = 0;
  /** As a successor, until its pods are adopted: the predecessor's listeners, and whether new ones are SO_REUSEPORT. */
  private takenListeners: { handed: HandedByPod; reusePort: boolean } | undefined;

  /**
   * Loads and makes the implementations the config chooses, then the agent: the kubernetes client only with the
   * kubernetes source, gRPC only with the istio CA, the eBPF bindings only in ebpf mode (each a dynamic import).
   * `onFatal`: a part failed for good while running (today the native HBONE data plane ending its event socket); the
   * agent is marked not ready first. main.ts handles it as a failed start: stop, exit 1, the DaemonSet restarts the agent.
   */
  static async create(cfg: AgentConfig, log: Logger, hooks: AgentHooks = {}): Promise<Agent> {
    const caReady = openCa(cfg);
    caReady.catch(() => undefined); // reported by start()
    const [backend, source] = await Promise.all([
      createBackend(cfg.redirectMode, { probeSnatCgroup: cfg.probeSnatCgroup, preserveSource: cfg.preserveSource, captureIpv6: cfg.captureIpv6, warn: (msg) => log.warn({ component: 'redirect' }, msg) }),
      createWorkloadSource(cfg, log.child({ component: 'workloads' })),
    ]);
    return new Agent(cfg, log, { backend, source, caReady }, hooks);
  }

  private constructor(
    private readonly cfg: AgentConfig,
    private readonly log: Logger,
    chosen: { backend: RedirectBackend; source: WorkloadSource; caReady: Promise<CertificateAuthority> },
    private readonly hooks: AgentHooks,
  ) {
    this.backend = chosen.backend;
    this.source = chosen.source;
    const store = new StateStore(cfg.stateDir, log.child({ component: 'state' }));
    this.store = store;
    this.caReady = chosen.caReady;
    const ca: CertificateAuthority = { sign: async (req) => (await this.caReady).sign(req) };
    this.identities = new CertManager({ ca, trustDomain: cfg.trustDomain, lifetimeSeconds: cfg.certTtlSeconds, log: log.child({ component: 'identity' }) });
    this.hbone = new NativeHbone(this.identities, log.child({ component: 'hbone-native' }), {
      onFatal: (err) => {
        this.ready = false;
        this.notReadyReason = err.message;
        hooks.onFatal?.(err);
      },
    });
    const directory = new WorkloadDirectory(this.source, cfg.trustDomain, {
      nodeName: cfg.nodeName, clusterDomain: cfg.clusterDomain, serviceCidrs: cfg.serviceCidrs, log: log.child({ component: 'services' }),
      meshFamilies: this.backend.captureFamilies,
    });
    this.directory = directory;
    this.metrics = new AgentMetrics({
      enrolledCount: () => this.enroller.enrolledCount(),
      enrollerCounters: () => this.enroller.counters,
      certSnapshot: () => this.identities.snapshot(),
      certCounters: () => this.identities.counters,
      malformedPolicies: () => this.malformedPolicies().length,
    });
    this.enroller = new Enroller(this.backend, this.source, store, log.child({ component: 'enroller' }), cfg.podLookupTimeoutMs, {
      lookup: (ip) => directory.lookup(ip),
      service: (ip, port) => directory.service(ip, port),
      knownPod: (ref) => directory.knownPod(ref),
      serviceAddress: (ip) => directory.serviceAddress(ip),
      serviceOfEndpoint: (ip, port) => directory.serviceOfEndpoint(ip, port),
      identities: this.identities,
      hbone: this.hbone,
      trustDomain: cfg.trustDomain,
      connections: this.metrics,
      accessLog: { log: log.child({ scope: 'access' }), complete: cfg.accessLog },
      preserveSource: cfg.preserveSource,
      appMark: this.backend.appMark,
      captureFamilies: this.backend.captureFamilies,
    }, this.metrics, removeOwnBackendsRules);
    this.runningPods = new RunningPods(this.source, this.enroller, { nodeName: cfg.nodeName, procRoot: cfg.procRoot, log: log.child({ component: 'late-enrolment' }) });
    this.server = new EventServer(cfg.socketPath, {
      enroller: this.enroller, status: () => this.status(), certs: () => ({ identities: this.identities.snapshot(), counters: this.identities.counters, hbone: this.hbone.stats }),
      ready: this.readyPromise, log: log.child({ component: 'events' }), onPluginRequest: (command, result) => this.metrics.pluginRequest(command, result),
      verifyHost: () => this.backend.verifyHost(), source: this.source, trustDomain: cfg.trustDomain, directory,
      handover: (conn, head) => {
        const hlog = log.child({ component: 'handover' });
        servePredecessor(conn, head, this.predecessorHooks(), cfg.drainSeconds, hlog).catch((err: unknown) => hlog.error({ error: describe(err) }, 'take-over failed'));
      },
    });
    this.admin = new AdminServer({
      ports: { admin: cfg.adminPort, metrics: cfg.metricsPort, readiness: cfg.readinessPort },
      metrics: this.metrics,
      ready: () => this.status(),
      configDump: () => this.configDump(),
      rootLog: log,
      log: log.child({ component: 'admin' }),
    });
  }

  /** What :15000/config_dump shows: workloads, pods, certificates (the snapshot: no private keys), policies, config. */
  configDump(): unknown {
    return {
      node: this.cfg.nodeName,
      status: this.status(),
      workloads: this.directory.all(),
      services: this.directory.serviceViews(),
      pods: this.enroller.list(),
      certificates: { identities: this.identities.snapshot(), counters: this.identities.counters },
      policies: { authorizationPolicies: this.source.authorizationPolicies(), peerAuthentications: this.source.peerAuthentications() },
      config: this.cfg,
    };
  }

  status(): AgentStatus {
    const malformed = this.malformedPolicies();
    return {
      ready: this.ready,
      ...(this.ready ? {} : { reason: this.notReadyReason }),
      node: this.cfg.nodeName,
      backend: this.backend.name,
      enrolled: this.enroller.enrolledCount(),
      malformedPolicies: malformed.length,
      malformed,
    };
  }

  /** Policies that failed to parse and stand as fail-closed placeholders. */
  private malformedPolicies(): ReturnType<typeof malformedPolicies> {
    return malformedPolicies(this.source.authorizationPolicies(), this.source.peerAuthentications());
  }

  /** Ends the running start-up step (its time goes to startSteps) and enters `reason`'s, what /healthz/ready says meanwhile. */
  private step(reason: string | undefined): void {
    const now = performance.now();
    this.startSteps[this.notReadyReason] = Math.round(now - this.stepStarted);
    this.stepStarted = now;
    if (reason !== undefined) this.notReadyReason = reason;
  }

  /** Starts everything; the socket answers (not ready) early so the plugin gets a clear "try again later". */
  async start(): Promise<void> {
    this.startSteps['node start and module loading'] = Math.round(performance.now());
    this.stepStarted = performance.now();
    selfNetns();
    const predecessor = await this.takeStateDir();
    this.hbone.start();
    this.log.info({ dataPath: 'native' }, 'native HBONE data plane started');
    // A successor publishes its socket only once ready: until then the predecessor answers (and holds plugin events).
    await this.server.start({ publish: !predecessor });
    this.log.info({ socket: this.cfg.socketPath, node: this.cfg.nodeName, backend: this.backend.name, takingOver: !!predecessor }, 'event server listening');
    await this.admin.start();
    this.log.info({ admin: this.cfg.adminPort, metrics: this.cfg.metricsPort, readiness: this.cfg.readinessPort }, 'admin endpoints listening on 127.0.0.1');
    this.step('opening the certificate authority');
    try {
      await this.caReady;
    } catch (err) {
      throw new Error(`cannot open the ${this.cfg.ca} CA (${this.cfg.ca === 'builtin' ? this.cfg.caDir : this.cfg.istioCaAddress}): ${describe(err)}`, { cause: err });
    }
    this.step('checking the workload source configuration');
    await this.source.prepare?.(); // a broken kubeconfig stops the agent here, before any rule is installed on the node
    this.step('probing the kernel for the redirection backend');
    await this.backend.prepare();
    if (this.cfg.preserveSource) {
      this.step('probing the kernel for inbound source preservation');
      await probeSourcePreservation({ ipv6: this.cfg.captureIpv6 }); // fail closed and clear: never a silent fallback to the agent's own address
    }
    this.step('installing node rules');
    await this.backend.installHost();
    this.step('loading workloads');
    await this.source.start();
    this.step('adopting pods');
    const listeners = this.takenListeners;
    this.takenListeners = undefined;
    if (predecessor) this.backend.beginTakeOver?.();
    await this.enroller.adopt(listeners);
    this.runningPods.start(); // pods already running that no ADD told us about: found through /proc
    this.step(undefined);
    this.ready = true;
    this.markReady();
    if (this.cfg.repairIntervalMs > 0) this.repairLoop = this.runRepairLoop(this.cfg.repairIntervalMs);
    this.log.info({ enrolled: this.enroller.enrolledCount(), startMs: this.startSteps }, 'agent ready');
    releaseMemoryLater(this.log.child({ component: 'memory' }));
    // Not needed to be ready (the root is opened with node:crypto): loaded now, before the first certificate needs it.
    setImmediate(() => void x509Util().catch((err: unknown) => this.log.error({ error: describe(err) }, 'cannot load the X.509 library; certificates cannot be issued')));
    if (predecessor) this.completeTakeOver(predecessor);
    else this.releaseHandoverLock();
  }

  /**
   * Takes the state dir: both locks (a fresh start), or handover.lock and then agent.lock once the running agent has
   * released it (a take-over: returns the channel to it). Throws TakeOverError for a third agent or a failed take-over.
   */
  private async takeStateDir(): Promise<HandoverChannel | undefined> {
    const handoverPath = join(this.cfg.stateDir, HANDOVER_LOCK_FILE);
    const agentPath = join(this.cfg.stateDir, AGENT_LOCK_FILE);
    const handover = tryLock(handoverPath);
    const agent = handover ? tryLock(agentPath) : undefined;
    const plan = startPlan({ handover: handover !== undefined, agent: agent !== undefined });
    if (plan === 'refuse') {
      const pid = lockHolder(handoverPath);
      throw new TakeOverError(`another agent${pid ? ` (pid ${pid})` : ''} is starting, taking over or draining after a take-over on state dir ${this.cfg.stateDir}: ` +
        'at most two agents run at once (one hands over to the other); start this one after it has finished');
    }
    this.handoverLock = handover;
    if (plan === 'fresh') {
      this.agentLock = agent;
      return undefined;
    }
    const holder = lockHolder(agentPath); // for logs: the running agent may be in another PID namespace
    this.notReadyReason = 'taking over from the running agent';
    this.log.info({ runningPid: holder, socket: this.cfg.socketPath }, 'state dir held by a running agent; asking it to hand over');
    const channel = await this.requestTakeOver();
    // The predecessor has let go of agent.lock; nobody else can race for it (they would need handover.lock first).
    for (let i = 0; i < 50 && !this.agentLock; i++) {
      this.agentLock = tryLock(agentPath);
      if (!this.agentLock) await sleep(100);
    }
    if (!this.agentLock) {
      channel.close();
      this.releaseHandoverLock();
      throw new TakeOverError(`the running agent said it released ${agentPath}, but it is still held`);
    }
    this.log.info({ runningPid: holder }, 'state dir taken over; adopting pods');
    await sleep(testDelayMs('AMBIENT_HANDOVER_TEST_ADOPT_DELAY_MS')); // the predecessor holds plugin events meanwhile
    return channel;
  }

  /**
   * Asks the running agent to hand over and takes its pods' listening sockets (listener-transfer.ts) on an inbox opened
   * first. Returns the channel once the running agent has released the state dir and every listener it sent passed its
   * checks (kept in takenListeners for adopt()), or an older agent sent none (new listeners are then SO_REUSEPORT beside
   * its own). Anything else fails the take-over here, before any pod is touched: the running agent carries on.
   */
  private async requestTakeOver(): Promise<HandoverChannel> {
    const log = this.log.child({ component: 'handover' });
    const token = newHandoverToken();
    let inbox: ListenerInbox | undefined;
    try {
      inbox = ListenerInbox.open(listenerInboxPath(this.cfg.stateDir, token));
    } catch (err) {
      log.warn({ error: describe(err) }, 'cannot open the listener inbox; the running agent will refuse the take-over'); // fail closed
    }
    let enrolled: ReadonlyMap<string, PodRecord> | undefined; // the state dir's, read once, at the first listener
    const serving = inbox?.serve((meta, fd) => handedListenerProblem(meta, fd, enrolled ??= enrolledByKey(this.store.load())), LISTENER_LIMITS, log);
    const received = async (): Promise<{ tally: ListenerInboxTally; handed: HandedByPod }> => (
      serving ? serving : { tally: { received: 0, accepted: 0, refused: 0, problem: 'no listener inbox' }, handed: new Map() });
    let taken: Awaited<ReturnType<typeof requestTakeOver>>;
    try {
      // With an inbox the running agent sends every listener before `released`: its transfer bound comes on top.
      const releasedMs = TAKEOVER_TIMEOUT_MS + (inbox ? LISTENER_LIMITS.totalMs : 0);
      taken = await requestTakeOver(this.cfg.socketPath, { answerMs: TAKEOVER_TIMEOUT_MS, releasedMs }, inbox ? token : undefined);
    } catch (err) {
      inbox?.cancel();
      closeHanded((await received()).handed);
      this.releaseHandoverLock();
      throw err;
    }
    if (taken.released.listeners === undefined) inbox?.cancel(); // an older agent: it never connects
    const { tally, handed } = await received();
    const decision = listenerDecision(taken.released, tally);
    log.info({ ...tally, plan: decision.plan }, 'listeners from the running agent');
    if (decision.plan === 'fail') {
      closeHanded(handed);
      taken.channel.close(); // the running agent resumes with its own listeners
      this.releaseHandoverLock();
      throw new TakeOverError(`the take-over was abandoned before adopting any pod: ${decision.reason}`);
    }
    if (decision.plan === 'reuseport') log.warn(decision.warning);
    this.takenListeners = { handed, reusePort: decision.plan === 'reuseport' };
    return taken.channel;
  }


  /** The successor's last step: the socket path becomes ours, the predecessor is told, its drain is logged. */
  private completeTakeOver(channel: HandoverChannel): void {
    const inbox = this.openRelayInbox();
    this.server.publish();
    channel.send({ type: 'ready', pid: process.pid, ...(inbox ? { relays: RELAY_HANDOVER_VERSION, inbox } : {}) });
    this.log.info('take-over complete: socket published, predecessor told to stop accepting');
    void (async () => {
      // Each wait is bounded by the predecessor's own bounds: its hand-off and relay moves, then its drain deadline.
      let waitMs = RELAY_LIMITS.totalMs + PREDECESSOR_SLACK_MS;
      for (;;) {
        let m: HandoverMessage;
        try {
          m = await channel.next(waitMs);
        } catch (err) {
          if (channel.open) this.log.warn({ error: describe(err) }, 'the predecessor overran its drain; no longer waiting for it');
          break;
        }
        this.log.info({ predecessor: m }, 'predecessor reports');
        waitMs = (m.type === 'draining' ? m.deadlineSeconds * 1000 : 0) + PREDECESSOR_SLACK_MS;
      }
      channel.close();
      this.backend.endTakeOver?.();
      this.releaseHandoverLock();
      this.log.info('predecessor gone; handover lock released');
    })();
  }

  /**
   * The successor's relay inbox (handover/relay-transfer.ts), served in the background: the predecessor's plain TCP
   * relays arrive there and carry on in their pods' forwarders. Returns its token (for `ready`), or undefined (the
   * predecessor drains them) if it cannot open.
   */
  private openRelayInbox(): string | undefined {
    const token = newHandoverToken();
    let inbox: RelayInbox;
    try {
      inbox = RelayInbox.open(relayInboxPath(this.cfg.stateDir, token));
    } catch (err) {
      this.log.warn({ error: describe(err) }, 'cannot open the relay inbox; the predecessor drains its relays instead');
      return undefined;
    }
    const ackDelayMs = testDelayMs('AMBIENT_HANDOVER_TEST_ACK_DELAY_MS');
    const log = this.log.child({ component: 'handover' });
    const hooks = {
      canAdopt: (m: Parameters<Enroller['canAdoptRelay']>[0]) => this.enroller.canAdoptRelay(m),
      adopt: (m: Parameters<Enroller['adoptRelay']>[0], down: number, up: number) => this.enroller.adoptRelay(m, down, up),
    };
    void inbox.serve(hooks, RELAY_LIMITS, log, ackDelayMs).then((t) => {
      log.info(t, 'relays from the predecessor carried on here');
    });
    return token;
  }

  /**
   * True when a stop must wait: this agent is handing over (the DaemonSet deletes the old pod as soon as the new one is
   * ready, in the middle of the drain). It then exits when the drain ends, or stops if the successor goes away first.
   */
  deferStop(): boolean {
    if (!this.handingOver) return false;
    this.stopDeferred = true;
    return true;
  }

  private releaseHandoverLock(): void {
    this.handoverLock?.release();
    this.handoverLock = undefined;
  }

  /** This agent's side of a take-over, as the predecessor (handover/session.ts runs the conversation). */
  private predecessorHooks(): PredecessorHooks {
    return {
      refusal: () => refusalReason({ ready: this.ready, handingOver: this.handingOver, stopping: this.stopping }),
      freeze: async (successorPid) => {
        this.handingOver = true;
        this.ready = false;
        this.notReadyReason = `handing over to agent pid ${successorPid}`;
        this.server.holdPluginEvents();
        this.enroller.freeze();
        await this.stopRepairLoop();
        await this.runningPods.stop();
        await this.server.idle();
        // Late (un)enrolment started before the freeze finishes here; after it no record is written until thaw.
        await this.enroller.quiesce();
        await this.store.flushed();
        this.agentLock?.release();
        this.agentLock = undefined;
      },
      resume: async (reason) => {
        if (this.stopDeferred) {
          this.log.warn({ reason }, 'successor went away before it was ready; stopping as asked earlier (rules stay)');
          this.handingOver = false;
          this.hooks.onDeferredStop?.();
          return;
        }
        this.log.warn({ reason }, 'successor went away before it was ready; carrying on');
        await this.retakeAgentLock();
        if (!this.agentLock) {
          this.log.warn('stopping as asked while waiting for the state dir lock (rules stay)');
          this.handingOver = false;
          this.hooks.onDeferredStop?.();
          return;
        }
        this.handingOver = false;
        if (await this.server.reclaimPath()) this.log.warn({ socket: this.cfg.socketPath }, 'the successor had published its socket before it went away: this agent\'s socket published again');
        this.enroller.thaw();
        this.runningPods.start();
        if (this.cfg.repairIntervalMs > 0) this.repairLoop = this.runRepairLoop(this.cfg.repairIntervalMs);
        this.ready = true;
        this.server.endHold('local');
      },
      moveListeners: async (inbox) => {
        let path: string;
        try {
          path = listenerInboxPath(this.cfg.stateDir, inbox);
        } catch (err) {
          return { sent: 0, accepted: 0, problem: describe(err) };
        }
        return sendListeners(path, this.enroller.listenerFds(), LISTENER_LIMITS, this.log.child({ component: 'handover' }));
      },
      handOff: async () => {
        this.server.endHold('forward');
        await this.enroller.stopAccepting();
        await this.admin.stop();
        return this.enroller.relayCounts().open;
      },
      moveRelays: async (inbox) => {
        const relays = this.enroller.movableRelays();
        const tally = await sendRelays(relayInboxPath(this.cfg.stateDir, inbox), relays, RELAY_LIMITS, this.log.child({ component: 'handover' }));
        this.movedRelays = tally.moved;
        return tally;
      },
      drain: async () => {
        const tally = await this.drain();
        await this.server.idle(); // held plugin events forwarded to the successor: their answers go back first
        return tally;
      },
      finish: (tally) => this.hooks.onHandedOver?.(tally),
    };
  }

  /**
   * Takes agent.lock back after an abandoned take-over. A successor that went away may still hold it while it stops: it is
   * released when that agent exits (the kernel drops flock locks), so this waits as long as that takes, never giving up
   * the node for it; a stop asked for meanwhile (SIGTERM) ends the wait with no lock.
   */
  private async retakeAgentLock(): Promise<void> {
    const path = join(this.cfg.stateDir, AGENT_LOCK_FILE);
    const t0 = Date.now();
    let noticed = t0;
    while (!this.stopDeferred) {
      this.agentLock = tryLock(path);
      if (this.agentLock) return;
      if (Date.now() - noticed >= NOTICE_MS) {
        noticed = Date.now();
        this.log.warn({ waitedSeconds: Math.round((noticed - t0) / 1000), holderPid: lockHolder(path) }, 'the state dir lock is still held by the agent that went away; waiting for it to exit');
      }
      await sleep(100);
    }
  }

  /** Waits for open relays to end, up to --drain-seconds; counted and logged. What is left is cut by stop(). */
  private async drain(): Promise<DrainTally> {
    const start = this.enroller.relayCounts();
    const deadline = Date.now() + this.cfg.drainSeconds * 1000;
    for (;;) {
      const now = this.enroller.relayCounts();
      const { finished, tally } = drainTally(start.open, now.opened - start.opened, now.open, Date.now() >= deadline);
      if (finished) {
        this.log.info({ ...tally, moved: this.movedRelays, seconds: this.cfg.drainSeconds }, tally.cut ? 'drain deadline reached; cutting the rest' : 'drain finished');
        return tally;
      }
      await sleep(DRAIN_POLL_MS);
    }
  }

  private async stopRepairLoop(): Promise<void> {
    const loop = this.repairLoop;
    this.repairLoop = undefined;
    this.repairPaused = true;
    this.wake?.();
    await loop;
    this.repairPaused = false;
  }

  /**
   * Verify-and-repair, paced: each pass checks the node rules, then every enrolled pod with the pass spread evenly over
   * the interval, so the tool execs it costs are a steady trickle instead of a burst that would stall ADDs.
   */
  private async runRepairLoop(intervalMs: number): Promise<void> {
    while (!this.stopping && !this.repairPaused) {
      const passStart = Date.now();
      await this.repairHost();
      const keys = this.enroller.enrolledKeys();
      const gap = keys.length ? intervalMs / (keys.length + 1) : intervalMs;
      for (const key of keys) {
        await this.pause(gap);
        // Each check execs the backend's tools, which fork the agent: it waits while the runtime's ADDs and DELs run.
        await this.enroller.quiet(intervalMs);
        if (this.stopping || this.repairPaused) return;
        await this.enroller.repairOne(key).catch((err: unknown) => this.log.error({ error: describe(err) }, 'pod repair failed'));
      }
      await this.pause(Math.max(gap, intervalMs - (Date.now() - passStart)));
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      this.wake = () => {
        clearTimeout(t);
        resolve();
      };
    });
  }

  private async repairHost(): Promise<void> {
    try {
      const host = await this.backend.verifyHost();
      if (host.ok) return;
      this.log.warn({ missing: host.missing, unexpected: host.unexpected }, 'node probe rules drifted; repairing');
      this.enroller.counters.ruleRepairs++;
      await this.backend.installHost();
      for (const p of this.enroller.list()) {
        if (p.state === 'enrolled') for (const ip of probeIps(p)) await this.backend.addProbeTarget(ip, p.uid);
      }
    } catch (err) {
      this.log.error({ error: describe(err) }, 'node rule repair failed');
    }
  }

  /** Stops serving. Rules stay in every pod and on the node, so enrolled pods are refused, never bypassed, until restart. */
  async stop(): Promise<void> {
    this.releaseHandoverLock();
    this.ready = false;
    this.notReadyReason = 'stopping';
    this.stopping = true;
    this.wake?.();
    await this.repairLoop;
    await this.server.stop();
    await this.admin.stop();
    await this.runningPods.stop();
    await this.source.stop();
    await this.enroller.shutdown();
    this.directory.close();
    this.hbone.stop();
    await this.identities.stop();
    this.agentLock?.release();
    this.agentLock = undefined;
  }
}

/** Opens the CA the config names; its module is loaded only then (the istio CA's pulls in gRPC). */
async function openCa(cfg: AgentConfig): Promise<CertificateAuthority> {
  if (cfg.ca === 'builtin') {
    const { BuiltinCa } = await import('./identity/builtin-ca.js');
    return BuiltinCa.open(cfg.caDir, { trustDomain: cfg.trustDomain });
  }
  const { IstioCa } = await import('./identity/istio-ca.js');
  return new IstioCa({
    address: cfg.istioCaAddress,
    rootCertFile: cfg.istioCaRootCert,
    tokenFile: cfg.istioCaTokenFile,
    ...(cfg.istioCaTlsServerName ? { tlsServerName: cfg.istioCaTlsServerName } : {}),
  });
}

/** A delay the take-over tests set through the environment (0 when unset or not a number; at most 60 s). */
function testDelayMs(name: string): number {
  return Math.min(60_000, Math.max(0, Number(process.env[name] ?? 0) || 0));
}

/** Enrolled records by attachment key. */
function enrolledByKey(records: readonly PodRecord[]): Map<string, PodRecord> {
  return new Map(records.filter((r) => r.state === 'enrolled').map((r) => [recordKey(r.containerId, r.ifname), r]));
}

/** Why a listener the predecessor handed over must not be used (undefined: it is the pod's, as its kind says). */
function handedListenerProblem(meta: ListenerMeta, fd: number, enrolled: ReadonlyMap<string, PodRecord>): string | undefined {
  const rec = enrolled.get(meta.pod);
  if (!rec) return 'no pod enrolled under this key in the state dir';
  const facts = listenerFacts(fd);
  return listenerProblem(meta.kind, facts, sameNetns(facts.netns, { inode: rec.netnsInode, dev: rec.netnsDev }));
}
