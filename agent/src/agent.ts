// The node agent's lifecycle: wires config, workload source, redirection backend, enroller and event server, in order.
// Start order matters: node rules and re-adoption finish before the socket reports ready, so no ADD races a half-started agent.
// Agent.create loads only the chosen implementations (workload source, redirection backend, CA): see create().
import { isIPv4 } from 'node:net';
import type { AgentConfig } from './config.js';
import { describe } from './errors.js';
import type { Logger } from './log.js';
import type { AgentStatus } from './protocol/cni-event.js';
import { Enroller } from './reconcile/enroller.js';
import { RunningPods } from './reconcile/running-pods.js';
import { createBackend, type RedirectBackend } from './redirect/backend.js';
import { StateStore } from './registry/state-store.js';
import { EventServer } from './server/event-server.js';
import { createWorkloadSource } from './workload/create-source.js';
import type { WorkloadSource } from './workload/source.js';
import { selfNetns } from './platform/netns.js';
import type { CertificateAuthority } from './identity/ca.js';
import { CertManager } from './identity/cert-manager.js';
import { NativeHbone } from './hbone/native.js';
import { WorkloadDirectory } from './workload/directory.js';
import { AgentMetrics } from './admin/metrics.js';
import { AdminServer } from './admin/admin-server.js';
import { malformedPolicies } from './policy/malformed.js';

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
  private repairLoop: Promise<void> | undefined;
  private stopping = false;
  private wake: (() => void) | undefined;
  private markReady!: () => void;
  private readonly readyPromise = new Promise<void>((resolve) => (this.markReady = resolve));

  /**
   * Loads and makes the implementations the config chooses, then the agent: the kubernetes client only with the
   * kubernetes source, gRPC only with the istio CA, the eBPF bindings only in ebpf mode (each a dynamic import).
   * `onFatal`: a part failed for good while running (today the native HBONE data plane ending its event socket); the
   * agent is marked not ready first. main.ts handles it as a failed start: stop, exit 1, the DaemonSet restarts the agent.
   */
  static async create(cfg: AgentConfig, log: Logger, hooks: { onFatal?: (err: Error) => void } = {}): Promise<Agent> {
    const caReady = openCa(cfg);
    caReady.catch(() => undefined); // reported by start()
    const [backend, source] = await Promise.all([
      createBackend(cfg.redirectMode, { probeSnatCgroup: cfg.probeSnatCgroup }),
      createWorkloadSource(cfg, log.child({ component: 'workloads' })),
    ]);
    return new Agent(cfg, log, { backend, source, caReady }, hooks);
  }

  private constructor(
    private readonly cfg: AgentConfig,
    private readonly log: Logger,
    chosen: { backend: RedirectBackend; source: WorkloadSource; caReady: Promise<CertificateAuthority> },
    hooks: { onFatal?: (err: Error) => void },
  ) {
    this.backend = chosen.backend;
    this.source = chosen.source;
    const store = new StateStore(cfg.stateDir, log.child({ component: 'state' }));
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
    }, this.metrics);
    this.runningPods = new RunningPods(this.source, this.enroller, { nodeName: cfg.nodeName, procRoot: cfg.procRoot, log: log.child({ component: 'late-enrolment' }) });
    this.server = new EventServer(cfg.socketPath, {
      enroller: this.enroller, status: () => this.status(), certs: () => ({ identities: this.identities.snapshot(), counters: this.identities.counters, hbone: this.hbone.stats }),
      ready: this.readyPromise, log: log.child({ component: 'events' }), onPluginRequest: (command, result) => this.metrics.pluginRequest(command, result),
      verifyHost: () => this.backend.verifyHost(), source: this.source, trustDomain: cfg.trustDomain, directory,
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

  /** Starts everything; the socket answers (not ready) early so the plugin gets a clear "try again later". */
  async start(): Promise<void> {
    selfNetns();
    this.hbone.start();
    this.log.info({ dataPath: 'native' }, 'native HBONE data plane started');
    await this.server.start();
    this.log.info({ socket: this.cfg.socketPath, node: this.cfg.nodeName, backend: this.backend.name }, 'event server listening');
    await this.admin.start();
    this.log.info({ admin: this.cfg.adminPort, metrics: this.cfg.metricsPort, readiness: this.cfg.readinessPort }, 'admin endpoints listening on 127.0.0.1');
    this.notReadyReason = 'opening the certificate authority';
    try {
      await this.caReady;
    } catch (err) {
      throw new Error(`cannot open the ${this.cfg.ca} CA (${this.cfg.ca === 'builtin' ? this.cfg.caDir : this.cfg.istioCaAddress}): ${describe(err)}`, { cause: err });
    }
    this.notReadyReason = 'checking the workload source configuration';
    await this.source.prepare?.(); // a broken kubeconfig stops the agent here, before any rule is installed on the node
    this.notReadyReason = 'probing the kernel for the redirection backend';
    await this.backend.prepare();
    this.notReadyReason = 'installing node rules';
    await this.backend.installHost();
    this.notReadyReason = 'loading workloads';
    await this.source.start();
    this.notReadyReason = 'adopting pods';
    await this.enroller.adopt();
    this.runningPods.start(); // pods already running that no ADD told us about: found through /proc
    this.ready = true;
    this.markReady();
    if (this.cfg.repairIntervalMs > 0) this.repairLoop = this.runRepairLoop(this.cfg.repairIntervalMs);
    this.log.info({ enrolled: this.enroller.enrolledCount() }, 'agent ready');
  }

  /**
   * Verify-and-repair, paced: each pass checks the node rules, then every enrolled pod with the pass spread evenly over
   * the interval, so the tool execs it costs are a steady trickle instead of a burst that would stall ADDs.
   */
  private async runRepairLoop(intervalMs: number): Promise<void> {
    while (!this.stopping) {
      const passStart = Date.now();
      await this.repairHost();
      const keys = this.enroller.enrolledKeys();
      const gap = keys.length ? intervalMs / (keys.length + 1) : intervalMs;
      for (const key of keys) {
        await this.pause(gap);
        if (this.stopping) return;
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
        if (p.state === 'enrolled') for (const ip of p.ips.filter((a) => isIPv4(a))) await this.backend.addProbeTarget(ip, p.uid);
      }
    } catch (err) {
      this.log.error({ error: describe(err) }, 'node rule repair failed');
    }
  }

  /** Stops serving. Rules stay in every pod and on the node, so enrolled pods are refused, never bypassed, until restart. */
  async stop(): Promise<void> {
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
