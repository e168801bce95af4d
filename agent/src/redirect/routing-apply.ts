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
 * Sets pods' net.ipv4.tcp_fwmark_accept (see reply-routing.ts FWMARK_ACCEPT_PATH): on with source preservation, so the
 * app's socket takes the mark of the agent's SYN (the netfilter backends' reply mark, the ebpf backend's re-injection
 * mark) and is routed through lo; off without it. Best effort (a read-only /proc/sys in an unprivileged container
 * refuses it): the returned setter says its first failure through `warn`, once per agent, and never throws.
 */
export function fwmarkAcceptSetter(warn?: (msg: string) => void): (netns: Netns, on: boolean) => void {
  let said = false;
  return (netns, on) => {
    try {
      writeNetSysctl(netns, FWMARK_ACCEPT_PATH, on ? '1' : '0');
    } catch (err) {
      if (said) return;
      said = true;
      const why = err instanceof Error ? err.message : String(err);
      warn?.(`cannot set net.ipv4.tcp_fwmark_accept=${on ? 1 : 0} in pods (${why})${on ? ": source-preserved connections to apps keep eth0's MSS (slower bulk to apps; nothing else changes)" : ''}; the agent needs a writable /proc/sys (privileged) for it`);
    }
  };
}
