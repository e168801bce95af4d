// Marks each pod's capture state on the pod itself (Istio's `ambient.istio.io/redirection` annotation, through the
// pods/status subresource) so `kubectl` shows it. Best effort: failures are logged and retried, never block enrolment.
import type { Logger } from '../../log.js';
import { describe } from '../../errors.js';
import type { KubeClient } from './client.js';
import { backoffDelay, type BackoffPolicy } from '../../backoff.js';
import { DEFAULT_BACKOFF, kubeBackoff } from './reflector.js';

export const REDIRECTION_ANNOTATION = 'ambient.istio.io/redirection';

/** enabled: captured; pending: selected but not captured yet (retrying); undefined: not captured (annotation removed). */
export type CaptureState = 'enabled' | 'pending';

export interface PodRef {
  namespace: string;
  name: string;
  uid: string;
}

interface Wanted extends PodRef {
  state: CaptureState | undefined;
  attempt: number;
}

/** Pure: the merge patch that sets (or, for undefined, removes) the annotation; the uid makes it a precondition. */
export function redirectionPatch(pod: PodRef, state: CaptureState | undefined): unknown {
  return { metadata: { ...(pod.uid ? { uid: pod.uid } : {}), annotations: { [REDIRECTION_ANNOTATION]: state ?? null } } };
}

export class PodAnnotator {
  private readonly wanted = new Map<string, Wanted>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly running = new Set<Promise<void>>();
  private stopped = false;
  readonly stats = { patches: 0, failures: 0 };

  constructor(
    private readonly client: KubeClient,
    /** The annotation value the pod carries now (from the informer), or undefined when the pod is gone. */
    private readonly current: (pod: PodRef) => { exists: boolean; value: string | undefined },
    private readonly log: Logger,
    private readonly backoff: BackoffPolicy = DEFAULT_BACKOFF,
  ) {}

  /** Records the desired state and patches in the background; the latest call for a pod wins. */
  set(pod: PodRef, state: CaptureState | undefined): void {
    if (this.stopped) return;
    const key = `${pod.namespace}/${pod.name}`;
    this.wanted.set(key, { ...pod, state, attempt: 0 });
    clearTimeout(this.timers.get(key));
    this.timers.delete(key);
    this.kick(key);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    await Promise.allSettled([...this.running]);
  }

  private kick(key: string): void {
    const p = this.patch(key).finally(() => this.running.delete(p));
    this.running.add(p);
  }

  private async patch(key: string): Promise<void> {
    const w = this.wanted.get(key);
    if (!w || this.stopped) return;
    const now = this.current(w);
    if (!now.exists || now.value === w.state) {
      this.wanted.delete(key);
      return;
    }
    try {
      await this.client.mergePatch(`/api/v1/namespaces/${encodeURIComponent(w.namespace)}/pods/${encodeURIComponent(w.name)}/status`, redirectionPatch(w, w.state));
      this.stats.patches++;
      if (this.wanted.get(key) === w) this.wanted.delete(key);
    } catch (err) {
      this.stats.failures++;
      if (this.wanted.get(key) !== w || this.stopped) return;
      const status = (err as { status?: number }).status;
      if (status === 404 || status === 409) {
        this.wanted.delete(key); // the pod (with this uid) is gone
        return;
      }
      const delay = backoffDelay(w.attempt++, kubeBackoff(this.backoff), Math.random);
      this.log.warn({ pod: key, state: w.state ?? 'removed', error: describe(err), retryInMs: delay }, 'marking the pod capture state failed; retrying');
      const t = setTimeout(() => {
        this.timers.delete(key);
        this.kick(key);
      }, delay);
      t.unref();
      this.timers.set(key, t);
    }
  }
}
