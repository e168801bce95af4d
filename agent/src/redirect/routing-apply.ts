// Puts the in-pod policy routing that policy-routing.ts describes (the netfilter backends' reply routing, the ebpf
// backend's re-injection) into a pod over rtnetlink, from the agent itself: the one place that applies it, with the
// pod's tcp_fwmark_accept and fwmark_reflect. Idempotent, never removes anything.
import { fwmarkRuleRequest, localDefaultRouteRequest, sendRtnetlink } from '../platform/rtnetlink.js';
import { strerror } from '../platform/libc.js';
import { readNetSysctls, writeNetSysctls, type Netns } from '../platform/netns.js';
import type { MarkRule, RouteFamily } from './policy-routing.js';
import { FWMARK_ACCEPT_PATH, FWMARK_REFLECT_PATHS } from './reply-routing.js';

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

/** The sysctls a pod's reply marks take: tcp_fwmark_accept, and fwmark_reflect of each family in `reflect`. */
function replyMarkPaths(reflect: readonly RouteFamily[]): string[] {
  return [FWMARK_ACCEPT_PATH, ...reflect.map((f) => FWMARK_REFLECT_PATHS[f])];
}

/**
 * Sets pods' net.ipv4.tcp_fwmark_accept (see reply-routing.ts FWMARK_ACCEPT_PATH), and with `reflect` those families'
 * fwmark_reflect (FWMARK_REFLECT_PATHS): on with source preservation, so the app's socket takes the mark of the agent's
 * SYN (the netfilter backends' reply mark, the ebpf backend's re-injection mark) and is routed through lo, and so do
 * the resets and ICMP errors the pod's kernel answers the agent's packets with; off without it. Best effort (a
 * read-only /proc/sys in an unprivileged container refuses it): the returned setter says its first failure through
 * `warn`, once per agent, and never throws.
 */
export function replyMarksSetter(warn?: (msg: string) => void): (netns: Netns, on: boolean, reflect?: readonly RouteFamily[]) => void {
  let said = false;
  return (netns, on, reflect = []) => {
    try {
      writeNetSysctls(netns, replyMarkPaths(reflect), on ? '1' : '0');
    } catch (err) {
      if (said) return;
      said = true;
      const why = err instanceof Error ? err.message : String(err);
      warn?.(`cannot set net.ipv4.tcp_fwmark_accept${reflect.length ? ' and fwmark_reflect' : ''}=${on ? 1 : 0} in pods (${why})${on ? ': source-preserved connections to apps keep a per-packet mark restore and eth0\'s MSS (slower bulk to apps; nothing else changes)' : ''}; the agent needs a writable /proc/sys (privileged) for it`);
    }
  };
}

/** Whether the pod's tcp_fwmark_accept, and fwmark_reflect of each family in `reflect`, are all on (false when one cannot be read). */
export function replyMarksOn(netns: Netns, reflect: readonly RouteFamily[] = []): boolean {
  try {
    return readNetSysctls(netns, replyMarkPaths(reflect)).every((v) => v === '1');
  } catch {
    return false;
  }
}
