// Callers waiting for a pod to appear in a workload source (ADD racing the source), shared by every source.
// A source calls notify() after each change; each waiter re-checks and resolves with the pod, or undefined on timeout.
import type { PodInfo } from './types.js';

export class PodWaiters {
  private readonly waiters = new Set<() => void>();

  /** Resolves with `lookup()`'s pod as soon as it returns one, or with undefined after timeoutMs. */
  wait(lookup: () => PodInfo | undefined, timeoutMs: number): Promise<PodInfo | undefined> {
    const found = lookup();
    if (found || timeoutMs <= 0) return Promise.resolve(found);
    return new Promise((resolve) => {
      const check = (): void => {
        const pod = lookup();
        if (pod) done(pod);
      };
      const done = (pod: PodInfo | undefined): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(pod);
      };
      const timer = setTimeout(() => done(undefined), timeoutMs);
      this.waiters.add(check);
    });
  }

  notify(): void {
    for (const w of [...this.waiters]) w();
  }
}
