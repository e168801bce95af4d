// Puts the in-pod policy routing that policy-routing.ts describes (the netfilter backends' reply routing, the ebpf
// backend's re-injection) into a pod over rtnetlink, from the agent itself: the one place that applies it, with the
// pod's tcp_fwmark_accept. Idempotent, never removes anything.
import { fwmarkRuleRequest, localDefaultRouteRequest, sendRtnetlink } from '../platform/rtnetlink.js';
import { strerror } from '../platform/libc.js';
import { writeNetSysctl, type Netns } from '../platform/netns.js';
import type { MarkRule, RouteFamily } from './policy-routing.js';
import { FWMARK_ACCEPT_PATH } from './reply-routing.js';

/**
 * For each family, the rule's table gets its local default route (replaced, so always there afterwards), then the rule
 * (an identical rule already there is not added twice: EEXIST is success), route first as before. Throws naming every
 * request the kernel refused, once all were sent.
 */
export async function applyMarkRules(netns: Netns, rule: MarkRule, families: readonly RouteFamily[]): Promise<void> {
  const outcomes = sendRtnetlink(netns, families.flatMap((family) => [localDefaultRouteRequest(family, rule.table), fwmarkRuleRequest(family, rule)]));
  const failed = outcomes.filter((o) => o.errno !== 0);
  if (failed.length > 0) {
    throw new Error(`policy routing in ${netns.path} failed: ${failed.map((o) => `${o.what}: ${strerror(o.errno)} (errno ${o.errno})`).join('; ')}`);
  }
}

/**
 * Sets the pod's net.ipv4.tcp_fwmark_accept (see reply-routing.ts FWMARK_ACCEPT_PATH): on with source preservation's
 * rules in place, off with the ebpf backend (whose egress program passes packets carrying the agent mark, which an app
 * socket must never inherit from the agent's SYN).
 * Best effort: the error when /proc/sys cannot be written (read-only in an unprivileged container), else undefined.
 */
export function setFwmarkAccept(netns: Netns, on: boolean): Error | undefined {
  try {
    writeNetSysctl(netns, FWMARK_ACCEPT_PATH, on ? '1' : '0');
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}
