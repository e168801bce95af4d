// Puts the in-pod policy routing that policy-routing.ts describes (the netfilter backends' reply routing, the ebpf
// backend's re-injection) into a pod over rtnetlink, from the agent itself: the one place that applies it. Idempotent,
// never removes anything.
import { fwmarkRuleRequest, localDefaultRouteRequest, sendRtnetlink } from '../platform/rtnetlink.js';
import { strerror } from '../platform/libc.js';
import type { Netns } from '../platform/netns.js';
import type { MarkRule, RouteFamily } from './policy-routing.js';

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
