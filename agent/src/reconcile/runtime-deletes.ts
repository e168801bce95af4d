// The pods the runtime has just DELeted, for late enrolment to leave alone for a while: the sandbox is gone while the
// pod, still listed with the deleted sandbox's addresses, is one the agent has no record of.

/** Late enrolment's longest retry delay (running-pods.ts's default; defined here, which imports nothing, to be shared). */
export const LATE_ENROLMENT_MAX_RETRY_MS = 30_000;
/**
 * How long a DEL keeps a pod out of late enrolment: as long as late enrolment's longest retry, so a new sandbox of the
 * pod that no ADD told the agent about (the plugin missing from the conflist) waits no longer than a pod found on a
 * retry would. How many pods are remembered (the oldest go first).
 */
export const RUNTIME_DELETED_MS = LATE_ENROLMENT_MAX_RETRY_MS;
export const RUNTIME_DELETED_MAX = 4096;

interface Deleted {
  /** The deleted sandbox's addresses. */
  ips: readonly string[];
  until: number;
}

export class RuntimeDeletes {
  /** By uid, in insertion order (oldest first). */
  private readonly deleted = new Map<string, Deleted>();

  constructor(private readonly ttlMs = RUNTIME_DELETED_MS, private readonly max = RUNTIME_DELETED_MAX) {}

  /** The runtime DELeted the pod's sandbox, which had these addresses. */
  note(uid: string, ips: readonly string[], now = Date.now()): void {
    if (uid === '' || ips.length === 0) return;
    this.deleted.delete(uid);
    this.deleted.set(uid, { ips: [...ips], until: now + this.ttlMs });
    for (const old of this.deleted.keys()) {
      if (this.deleted.size <= this.max) break;
      this.deleted.delete(old);
    }
  }

  /**
   * When the pod stops being left alone (ms since the epoch), or undefined when it is not: it is while its DEL is
   * recent and every address the pod is listed with was the deleted sandbox's (a new sandbox with a new address is not).
   */
  leftAloneUntil(pod: { uid: string; podIPs: readonly string[] }, now = Date.now()): number | undefined {
    const d = this.deleted.get(pod.uid);
    if (d === undefined) return undefined;
    if (d.until <= now) {
      this.deleted.delete(pod.uid);
      return undefined;
    }
    return pod.podIPs.length > 0 && pod.podIPs.every((ip) => d.ips.includes(ip)) ? d.until : undefined;
  }

  /** An ADD of the pod came: its DEL no longer counts. */
  forget(uid: string): void {
    this.deleted.delete(uid);
  }

  get size(): number {
    return this.deleted.size;
  }
}
