// The node agent's lifecycle: wires config, workload source, redirection backend, enroller and event server, in order.
// Start order matters: node rules and re-adoption finish before the socket reports ready, so no ADD races a half-started agent.
import type { AgentConfig } from './config.js';
import { describe } from './errors.js';
import type { Logger } from './log.js';
import type { AgentStatus } from './protocol/cni-event.js';
import { Enroller } from './reconcile/enroller.js';
import { createBackend, type RedirectBackend } from './redirect/backend.js';
import { StateStore } from './registry/state-store.js';
import { EventServer } from './server/event-server.js';
import { FilesWorkloadSource } from './workload/files-source.js';
import type { WorkloadSource } from './workload/source.js';
import { selfNetns } from './platform/netns.js';

export class Agent {
  private readonly backend: RedirectBackend;
  private readonly source: WorkloadSource;
  private readonly enroller: Enroller;
  private readonly server: EventServer;
  private ready = false;
  private notReadyReason = 'starting';
  private repairTimer: NodeJS.Timeout | undefined;
  private repairing = false;
  private markReady!: () => void;
  private readonly readyPromise = new Promise<void>((resolve) => (this.markReady = resolve));

  constructor(private readonly cfg: AgentConfig, private readonly log: Logger) {
    this.backend = createBackend(cfg.redirectMode);
    this.source = new FilesWorkloadSource(cfg.workloadsDir, log.child({ component: 'workloads' }));
    const store = new StateStore(cfg.stateDir, log.child({ component: 'state' }));
    this.enroller = new Enroller(this.backend, this.source, store, log.child({ component: 'enroller' }), cfg.podLookupTimeoutMs);
    this.server = new EventServer(cfg.socketPath, { enroller: this.enroller, status: () => this.status(), ready: this.readyPromise, log: log.child({ component: 'events' }) });
  }

  status(): AgentStatus {
    return {
      ready: this.ready,
      ...(this.ready ? {} : { reason: this.notReadyReason }),
      node: this.cfg.nodeName,
      backend: this.backend.name,
      enrolled: this.enroller.enrolledCount(),
    };
  }

  /** Starts everything; the socket answers (not ready) early so the plugin gets a clear "try again later". */
  async start(): Promise<void> {
    selfNetns();
    await this.server.start();
    this.log.info({ socket: this.cfg.socketPath, node: this.cfg.nodeName, backend: this.backend.name }, 'event server listening');
    this.notReadyReason = 'installing node rules';
    await this.backend.installHost();
    this.notReadyReason = 'loading workloads';
    await this.source.start();
    this.notReadyReason = 'adopting pods';
    await this.enroller.adopt();
    this.ready = true;
    this.markReady();
    if (this.cfg.repairIntervalMs > 0) {
      this.repairTimer = setInterval(() => void this.repair(), this.cfg.repairIntervalMs);
    }
    this.log.info({ enrolled: this.enroller.enrolledCount() }, 'agent ready');
  }

  /** One verify-and-repair pass over the node rules and every enrolled pod. */
  async repair(): Promise<void> {
    if (this.repairing) return;
    this.repairing = true;
    try {
      const host = await this.backend.verifyHost();
      if (!host.ok) {
        this.log.warn({ missing: host.missing, unexpected: host.unexpected }, 'node probe rules drifted; repairing');
        this.enroller.counters.ruleRepairs++;
        await this.backend.installHost();
        for (const p of this.enroller.list()) {
          if (p.state === 'enrolled') for (const ip of p.ips) await this.backend.addProbeTarget(ip, p.uid);
        }
      }
      await this.enroller.repairAll();
    } catch (err) {
      this.log.error({ error: describe(err) }, 'repair pass failed');
    } finally {
      this.repairing = false;
    }
  }

  /** Stops serving. Rules stay in every pod and on the node, so enrolled pods are refused, never bypassed, until restart. */
  async stop(): Promise<void> {
    this.ready = false;
    this.notReadyReason = 'stopping';
    if (this.repairTimer) clearInterval(this.repairTimer);
    await this.server.stop();
    await this.source.stop();
    await this.enroller.shutdown();
  }
}
