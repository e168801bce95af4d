// Network namespaces whose in-pod rules a DEL left in place (they die with the namespace): a bounded memory, least
// recently remembered first out, so that an ADD into one of them reads the rules before writing (never "fresh").
import type { NetnsId } from '../platform/netns.js';

/** What a DEL left in a namespace: the sandbox it was, the backend that installed the rules and the interface its pieces sit on. */
export interface LeftRules {
  /** The runtime's sandbox id (CNI_CONTAINERID): a runtime re-using the sandbox keeps it; a new sandbox has its own. */
  containerId: string;
  backend: string;
  ifname: string;
}

/** How many namespaces are remembered at most; past it the oldest is forgotten (its ADD then costs a wrong "fresh" guess). */
export const LEFT_RULES_LIMIT = 4096;

const idKey = (id: NetnsId): string => `${id.dev}:${id.inode}`;

/**
 * Keyed by the namespace's dev:inode, and matched only for the same sandbox id: the kernel hands a freed namespace inode
 * to the next namespace made (lowest free number first), so the inode alone would match most new pods after a DEL.
 * Forgetting one (past the limit, or an agent restart) lets an ADD into it write without reading, which for iptables
 * leaves a duplicate jump that verify reports and repair removes.
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

  /** What a DEL of sandbox `containerId` left in the namespace; undefined when nothing is known of that sandbox there. */
  get(id: NetnsId, containerId: string): LeftRules | undefined {
    const left = this.entries.get(idKey(id));
    return left?.containerId === containerId ? left : undefined;
  }

  has(id: NetnsId, containerId: string): boolean {
    return this.get(id, containerId) !== undefined;
  }

  /** Forgets a namespace: an ADD took it over (its rules are now the attachment's) or removed what was left. */
  forget(id: NetnsId): void {
    this.entries.delete(idKey(id));
  }
}
