// Pure pieces of inbound source preservation shared by the netfilter backends: the pod's policy-routing rule and local
// route (as `ip` inputs and scripts, per address family), how they read back, and where the agent's upstream socket binds.
import { isIPv4 } from 'node:net';
import { LOCAL_ROUTE_TABLE, REPLY_MARK, REPLY_MARK_MASK, REPLY_RULE_PREF } from './constants.js';
import {
  expectedRuleLines, localRouteDelete, readCommands, routingBatchInput, ruleAndRouteLines, ruleDeleteLoop, ruleText, type MarkRule, type RouteFamily,
} from './policy-routing.js';

export type { RouteFamily };

/** The reply rule: packets carrying the reply mark go to the local table (policy-routing.ts writes its pieces). */
export const REPLY_RULE: MarkRule = { pref: REPLY_RULE_PREF, mark: REPLY_MARK, mask: REPLY_MARK_MASK, table: LOCAL_ROUTE_TABLE };

/** The rule's selector, as `ip rule` takes it and prints it. */
export const REPLY_RULE_TEXT = ruleText(REPLY_RULE);

/** `ip -<family> -batch -` input (and its argv) installing the local route and the rule, route first; idempotent. */
export function replyRoutingBatch(family: RouteFamily): { args: string[]; input: string } {
  return { args: [`-${family}`, '-batch', '-'], input: routingBatchInput(REPLY_RULE, family) };
}

/**
 * Removes the rule, then the local route unless another rule still looks the table up (the ebpf backend's, whose own
 * removal takes the route away). Harmless when nothing is there. Pod teardown (DEL) only: see backend.ts.
 */
export function replyRoutingRemoveScript(family: RouteFamily): string {
  return [
    ruleDeleteLoop(REPLY_RULE, family),
    `if ! ip -${family} rule show | grep -q 'lookup ${LOCAL_ROUTE_TABLE}\\b'; then ${localRouteDelete(REPLY_RULE, family)}; fi`,
    'true',
  ].join('\n');
}

const SEP = '@@ambient-reply@@';

/** Prints what replyRoutingLines reads; one exec. */
export function replyRoutingReadScript(family: RouteFamily): string {
  return readCommands(REPLY_RULE, family, SEP);
}

/** The lines of drift reports and `ambient-node rules` (IPv6 ones prefixed like ip6tables lines). */
function tag(family: RouteFamily, line: string): string {
  return family === 6 ? `ip6: ${line}` : line;
}

/** The rule and the route as found, in our notation, from replyRoutingReadScript's output. */
export function replyRoutingLines(output: string, family: RouteFamily): string[] {
  const [rules = '', routes = ''] = output.split(SEP);
  return ruleAndRouteLines(rules, routes, LOCAL_ROUTE_TABLE).map((l) => tag(family, l));
}

/** What an enrolled pod must hold for a family when source preservation is on. */
export function expectedReplyRoutingLines(family: RouteFamily): string[] {
  return expectedRuleLines(REPLY_RULE).map((l) => tag(family, l));
}

/**
 * The address the agent's upstream socket to the app binds to (IP_TRANSPARENT), or undefined to let the kernel choose
 * (the pod's own address, as before): preservation off, or a client address that cannot stand as a source here
 * (loopback, unspecified, or a family this path does not carry yet).
 */
export function upstreamSource(clientIp: string, preserve: boolean): string | undefined {
  if (!preserve || !isIPv4(clientIp)) return undefined;
  const first = Number(clientIp.split('.')[0]);
  if (clientIp === '0.0.0.0' || first === 127 || first >= 224) return undefined;
  return clientIp;
}
