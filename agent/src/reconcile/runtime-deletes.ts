// The pods the runtime has just DELeted, by uid, for late enrolment to leave alone: their sandbox is gone while the API
// still lists them (until the kubelet confirms), and a new sandbox of one comes with its own ADD.

/** How long a DEL keeps a pod out of late enrolment, and how many such pods are remembered (the oldest go first). */
export const RUNTIME_DELETED_MS = 5 * 60_000;
export const RUNTIME_DELETED_MAX = 4096;

export class RuntimeDeletes {
  /** Uid -> when the DEL stops counting; in insertion order, oldest first. */
  private readonly until = new Map<string, number>();

  constructor(private readonly ttlMs = RUNTIME_DELETED_MS, private readonly max = RUNTIME_DELETED_MAX) {}

  /** The runtime DELeted the pod's attachment. */
  note(uid: string, now = Date.now()): void {
    if (uid === '') return;
    this.until.delete(uid);
    this.until.set(uid, now + this.ttlMs);
    for (const old of this.until.keys()) {
      if (this.until.size <= this.max) break;
      this.until.delete(old);
    }
  }

  /** True while the pod's last word from the runtime is a DEL, for at most the time-to-live. */
  has(uid: string, now = Date.now()): boolean {
    const until = this.until.get(uid);
    if (until === undefined) return false;
    if (until > now) return true;
    this.until.delete(uid);
    return false;
  }

  /** An ADD of the pod came: its DEL no longer counts. */
  forget(uid: string): void {
    this.until.delete(uid);
  }

  get size(): number {
    return this.until.size;
  }
}
