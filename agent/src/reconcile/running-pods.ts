// Late enrolment of pods the agent never saw an ADD for (running before the agent or the plugin, or labelled later):
// finds each selected pod's netns by scanning /proc, then hands it to the enroller. Retries with backoff until found.
import { backoffDelay } from '../backoff.js';
import { describe } from '../errors.js';
import type { Logger } from '../log.js';
import { findPodNetns, scanPodProcesses } from '../platform/proc-netns.js';
import { decideEnrolment } from '../workload/enrolment.js';
import type { WorkloadSource } from '../workload/source.js';
import type { PodInfo } from '../workload/types.js';
import type { Enroller } from './enroller.js';
import { CaptureFamilyRefusal } from './attachments.js';
import { LATE_ENROLMENT_MAX_RETRY_MS } from './runtime-deletes.js';

export interface RunningPodsOptions {
  nodeName: string;
  procRoot: string;
  log: Logger;
  /** First retry delay when a pod's netns is not found (doubles up to maxRetryMs). */
  retryMs?: number;
  maxRetryMs?: number;
}

/**
 * Pure: pods on this node that are selected for the mesh, have an IP, and that the enroller does not know yet (`known`:
 * it has a record of the pod, or the runtime has just DELeted it).
 */
export function podsToDiscover(source: Pick<WorkloadSource, 'pods' | 'getNamespace'>, nodeName: string, known: (pod: PodInfo) => boolean): PodInfo[] {
  return source.pods().filter((p) => p.nodeName === nodeName && p.uid && p.podIPs.length > 0 && !p.terminating && !known(p)
    && decideEnrolment(p, source.getNamespace(p.namespace)).enrol);
}

export class RunningPods {
  private timer: NodeJS.Timeout | undefined;
  /** The pass when a pod left alone after its DEL stops being so (passAt), and when that is. */
  private leftAloneTimer: NodeJS.Timeout | undefined;
  private leftAloneAt = Number.POSITIVE_INFINITY;
  private attempt = 0;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private subscribed = false;
  /** Uids of selected pods refused for their address families (CaptureFamilyRefusal), dropped once no longer selected. */
  private readonly refused = new Set<string>();

  constructor(private readonly source: WorkloadSource, private readonly enroller: Enroller, private readonly o: RunningPodsOptions) {}

  /** Looks once now (after re-adoption) and again whenever pods or namespaces change. */
  start(): void {
    this.stopped = false; // started again after stop(): a take-over the successor gave up on
    if (!this.subscribed) this.subscribe();
    this.kick();
  }

  private subscribe(): void {
    this.subscribed = true;
    this.source.onChange((c) => {
      // Only changes that can select a pod on this node: its own pods, or namespace labels.
      const here = c.pods.some((p) => (p.after ?? p.before)?.nodeName === this.o.nodeName);
      if (here || c.namespaces.length) {
        this.attempt = 0;
        this.kick();
      }
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.leftAloneTimer);
    this.leftAloneAt = Number.POSITIVE_INFINITY;
    await this.running;
  }

  /** A pass at `at` (ms since the epoch), unless one is already due sooner for this reason. */
  private passAt(at: number): void {
    if (this.stopped || at >= this.leftAloneAt) return;
    clearTimeout(this.leftAloneTimer);
    this.leftAloneAt = at;
    this.leftAloneTimer = setTimeout(() => {
      this.leftAloneAt = Number.POSITIVE_INFINITY;
      this.leftAloneTimer = undefined;
      void this.kick();
    }, Math.max(0, at - Date.now()) + 1);
    this.leftAloneTimer.unref();
  }

  /** Runs a pass now, or right after the one in progress. */
  kick(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    clearTimeout(this.timer);
    this.running = this.pass()
      .catch((err: unknown) => this.o.log.error({ error: describe(err) }, 'running-pod discovery failed'))
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          void this.kick();
        }
      });
    return this.running;
  }

  private async pass(): Promise<void> {
    // A pod the runtime has just DELeted is left alone until then, and looked for again when that ends.
    let leftAlone: number | undefined;
    const selected = podsToDiscover(this.source, this.o.nodeName, (p) => {
      if (this.enroller.knows(p.namespace, p.name)) return true;
      const until = this.enroller.leftAloneUntil(p);
      if (until !== undefined) leftAlone = Math.min(leftAlone ?? until, until);
      return until !== undefined;
    });
    if (leftAlone !== undefined) this.passAt(leftAlone);
    // A pod refused for its address families stays refused (its addresses do not change): not tried again while selected.
    const uids = new Set(selected.map((p) => p.uid));
    for (const uid of this.refused) if (!uids.has(uid)) this.refused.delete(uid);
    const wanted = selected.filter((p) => !this.refused.has(p.uid));
    if (wanted.length === 0) return;
    const procs = scanPodProcesses(this.o.procRoot);
    let missing = 0;
    for (const pod of wanted) {
      if (this.stopped) return;
      const plog = this.o.log.child({ pod: `${pod.namespace}/${pod.name}`, podUid: pod.uid });
      const found = await findPodNetns(procs.get(pod.uid) ?? [], pod.podIPs);
      if (!found) {
        missing++;
        plog.info({ candidates: procs.get(pod.uid)?.length ?? 0 }, 'selected running pod: no process in a netns holding its IP yet');
        this.source.reportCapture?.(pod, 'pending');
        continue;
      }
      try {
        await this.enroller.enrolDiscovered(pod, found);
      } catch (err) {
        if (err instanceof CaptureFamilyRefusal) {
          this.refused.add(pod.uid); // logged and counted by the enrolment; no annotation: it is not captured
          this.source.reportCapture?.(pod, undefined);
          continue;
        }
        missing++;
        plog.error({ error: describe(err) }, 'late enrolment of a running pod failed');
        this.source.reportCapture?.(pod, 'pending');
      }
    }
    if (missing && !this.stopped) {
      const policy = { initialMs: this.o.retryMs ?? 1000, maxMs: this.o.maxRetryMs ?? LATE_ENROLMENT_MAX_RETRY_MS, maxDoublings: 20 };
      const delay = backoffDelay(this.attempt++, policy, Math.random);
      this.timer = setTimeout(() => void this.kick(), delay);
      this.timer.unref();
    }
  }
}
