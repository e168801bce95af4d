// Network namespaces whose in-pod rules a DEL left in place (they die with the namespace): a bounded memory, least
// recently remembered first out, so that an ADD into one of them reads the rules before writing (never "fresh").
import type { NetnsId } from '../platform/netns.js';

/** What a DEL left in a namespace: the backend that installed the rules and the interface its pieces sit on. */
export interface LeftRules {
  backend: string;
  ifname: string;
}

/** How many namespaces are remembered at most; past it the oldest is forgotten (its ADD then costs a wrong "fresh" guess). */
export const LEFT_RULES_LIMIT = 4096;

const idKey = (id: NetnsId): string => `${id.dev}:${id.inode}`;

/**
 * Keyed by the namespace's dev:inode. An inode the kernel reuses for a new namespace only makes that namespace's ADD
 * read its (empty) rules once: safe. Forgetting one (past the limit) lets an ADD into it write without reading, which
 * for iptables leaves a duplicate jump that verify reports and repair removes.
 */
export class LeftRulesMemory {
  private readonly entries = new Map<string, LeftRules>();

  constructor(readonly limit = LEFT_RULES_LIMIT) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`the left-rules limit must be a positive integer, got ${limit}`);
  }

  get size(): number {
    return this.entries.size;
  }

  /** Remembers (or refreshes) a namespace; the oldest entries go once there are more than `limit`. */
  remember(id: NetnsId, left: LeftRules): void {
    const k = idKey(id);
    this.entries.delete(k);
    this.entries.set(k, left);
    for (const oldest of this.entries.keys()) {
      if (this.entries.size <= this.limit) break;
      this.entries.delete(oldest);
    }
  }

  /** What a DEL left in the namespace; undefined when nothing is known of it. */
  get(id: NetnsId): LeftRules | undefined {
    return this.entries.get(idKey(id));
  }

  has(id: NetnsId): boolean {
    return this.entries.has(idKey(id));
  }

  /** Forgets a namespace: an ADD took it over (its rules are now the attachment's) or removed what was left. */
  forget(id: NetnsId): void {
    this.entries.delete(idKey(id));
  }
}
