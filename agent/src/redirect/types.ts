// The redirection backend contract, shared by backend.ts (iptables, nftables, the factory) and ebpf.ts, and read by the
// enroller: its own module so neither backend file imports the other. Types, and the one pure rule every backend's
// captureFamilies follows.
import type { RedirectMode } from '../config.js';
import type { Netns } from '../platform/netns.js';
import { familiesOf, type IpFamily } from '../protocol/address.js';
import type { PodContext } from './ebpf-config.js';
import type { RulesSeen } from './rules-seen.js';

export type { PodContext, RulesSeen };

/**
 * installPod's options. `fresh`: see installPod. `seen`: where the pod's record says its rules were last proved exact
 * (rules-seen.ts): a netfilter backend that finds the namespace still at that generation, with the rules it would write
 * now, neither reads nor writes them (re-adoption after a restart runs no tool then).
 */
export interface InstallOptions {
  fresh?: boolean;
  seen?: RulesSeen | undefined;
}

/** RedirectBackend.captureFamilies of every backend: IPv4, and IPv6 too with --capture-ipv6. Pure. */
export const captureFamiliesFor = (captureIpv6: boolean): readonly IpFamily[] => (captureIpv6 ? ['ipv4', 'ipv6'] : ['ipv4']);

/**
 * Whether a pod's IPv6 is carried (its IPv6 listeners, its IPv6 reply routing): IPv6 is captured and the pod has an IPv6
 * address. The one decision both make, so they cannot disagree. Pure.
 */
export const podCapturesIpv6 = (podIps: readonly string[], captured: readonly IpFamily[]): boolean =>
  captured.includes('ipv6') && familiesOf(podIps).includes('ipv6');

export interface RuleDrift {
  ok: boolean;
  missing: string[];
  unexpected: string[];
  /** What was actually found (ours only), in the same notation as the expected rules; for `ambient-node rules`. */
  actual: string[];
  /** What was expected given what was found (a pod keeping a restore: backend.ts), when it differs from expectedPodRules'. */
  expected?: string[];
  /** Set (netfilter backends) when the read-back proved the pod's rules exact at one nf_tables generation: for its record. */
  seen?: RulesSeen;
}

/** The in-pod methods take the pod's namespace as an open handle (opened once per event by the enroller), never a path. */
export interface RedirectBackend {
  readonly name: RedirectMode;
  /**
   * The families whose TCP this backend's in-pod capture redirects to the agent; the pod's other families have their TCP
   * refused in the pod, never carried around the mesh: captureFamiliesFor(--capture-ipv6), whatever the backend.
   */
  readonly captureFamilies: readonly IpFamily[];
  /**
   * SO_MARK of the agent's sockets to its own pod's app (the inbound upstream, transparent with source preservation):
   * AGENT_MARK for the netfilter backends (their mangle rules turn it into the reply mark); the ebpf backend's
   * re-injection mark, whose rule routes the app's end of the connection through lo (see ebpf.ts).
   */
  readonly appMark: number;
  /**
   * A take-over's adoption starts (the predecessor, perhaps an older agent, still dials apps meanwhile) / the predecessor
   * is gone. The ebpf backend keeps tcp_fwmark_accept off in the pods it installs between the two (an older agent's
   * dials carry the agent mark, which its egress program passes: an app socket must not take it), then turns it on.
   */
  beginTakeOver?(): void;
  endTakeOver?(): void;
  /** Checks at start-up that the kernel and tools support this backend; throws naming what is missing. */
  prepare(): Promise<void>;
  /**
   * Installs (or repairs) the in-pod rules; idempotent. `fresh` says no rule of ours is in this namespace (the agent
   * never touched it, and no DEL left any there: reconcile/left-rules.ts) and no listener of the agent is open in it yet,
   * which lets a backend skip reading the current rules and install its pieces in any order (nothing can be carried
   * before the listeners open). A wrong guess leaves a duplicate jump that verify and repair remove.
   * Resolves with where the rules are now proved exact (for the pod's record), when the backend can tell (see InstallOptions).
   */
  installPod(netns: Netns, pod: PodContext, opts?: InstallOptions): Promise<RulesSeen | undefined>;
  verifyPod(netns: Netns, pod: PodContext): Promise<RuleDrift>;
  /** Human-readable expected rules, for `rules` output and errors (ebpf needs the pod: its interface and address appear). */
  expectedPodRules(pod?: PodContext): string[];
  /** Installs (or repairs) the node-side probe SNAT in the agent's own namespace; idempotent. */
  installHost(): Promise<void>;
  verifyHost(): Promise<RuleDrift>;
  addProbeTarget(ip: string, podUid: string): Promise<void>;
  /** The addresses the node's probe sets hold now, both families, canonical (protocol/address.ts): re-adoption adds only the others. */
  probeTargets(): Promise<Set<string>>;
  removeProbeTarget(ip: string): Promise<void>;
  /** Removes the node-side rules (clean uninstall only; upgrades leave them). */
  removeHost(): Promise<void>;
}
