// Pure pieces of inbound source preservation shared by the netfilter backends: the pod's policy-routing rule and local
// route (as `ip` inputs and scripts, per address family), how they read back, and where the agent's upstream socket binds.
import { isIPv4 } from 'node:net';
import { LOCAL_ROUTE_TABLE, REPLY_MARK, REPLY_MARK_MASK, REPLY_RULE_PREF } from './constants.js';

/** An address family of the pod's routing pieces (only 4 is installed today; 6 is here for the IPv6 capture to come). */
export type RouteFamily = 4 | 6;

const DEFAULT_ROUTE: Record<RouteFamily, string> = { 4: '0.0.0.0/0', 6: '::/0' };

/** The rule's selector, as `ip rule` takes it and prints it. */
export const REPLY_RULE_TEXT = `fwmark 0x${REPLY_MARK.toString(16)}/0x${REPLY_MARK_MASK.toString(16)} lookup ${LOCAL_ROUTE_TABLE}`;

/**
 * `ip -<family> -batch -` input (and its argv) installing the local route and the rule, route first. Idempotent without
 * removing anything: `route replace` always succeeds, a second `rule add` fails with "File exists" (routingBatchOk).
 */
export function replyRoutingBatch(family: RouteFamily): { args: string[]; input: string } {
  return {
    args: [`-${family}`, '-batch', '-'],
    input: `route replace local ${DEFAULT_ROUTE[family]} dev lo table ${LOCAL_ROUTE_TABLE}\nrule add pref ${REPLY_RULE_PREF} ${REPLY_RULE_TEXT}\n`,
  };
}

/**
 * Removes the rule, then the local route unless another rule still looks the table up (the ebpf backend's, whose own
 * removal takes the route away). Harmless when nothing is there.
 */
export function replyRoutingRemoveScript(family: RouteFamily): string {
  const ip = `ip -${family}`;
  return [
    `while ${ip} rule show pref ${REPLY_RULE_PREF} | grep -q '${REPLY_RULE_TEXT}'; do ${ip} rule del pref ${REPLY_RULE_PREF} ${REPLY_RULE_TEXT} || break; done`,
    `if ! ${ip} rule show | grep -q 'lookup ${LOCAL_ROUTE_TABLE}\\b'; then ${ip} route del local ${DEFAULT_ROUTE[family]} dev lo table ${LOCAL_ROUTE_TABLE} 2>/dev/null || true; fi`,
    'true',
  ].join('\n');
}

const SEP = '@@ambient-reply@@';

/** Prints what replyRoutingLines reads; one exec. */
export function replyRoutingReadScript(family: RouteFamily): string {
  // A table holding no route does not exist, and `ip route show table` then fails: here that means no route.
  return [`ip -${family} rule show pref ${REPLY_RULE_PREF}`, `echo ${SEP}`, `ip -${family} route show table ${LOCAL_ROUTE_TABLE} 2>/dev/null || true`].join('; ');
}

/** The lines of drift reports and `ambient-node rules` (IPv6 ones prefixed like ip6tables lines). */
function tag(family: RouteFamily, line: string): string {
  return family === 6 ? `ip6: ${line}` : line;
}

/** The rule and the route as found, in our notation, from replyRoutingReadScript's output. */
export function replyRoutingLines(output: string, family: RouteFamily): string[] {
  const [rules = '', routes = ''] = output.split(SEP);
  const lines: string[] = [];
  for (const l of rules.split('\n')) {
    const m = /^(\d+):\s+(.*)$/.exec(l.trim());
    if (m) lines.push(tag(family, `ip rule ${m[1]}: ${m[2]?.replace(/\s+/g, ' ')}`));
  }
  for (const l of routes.split('\n')) if (l.trim()) lines.push(tag(family, `route table ${LOCAL_ROUTE_TABLE}: ${l.trim().replace(/\s+/g, ' ')}`));
  return lines;
}

/** What an enrolled pod must hold for a family when source preservation is on. */
export function expectedReplyRoutingLines(family: RouteFamily): string[] {
  return [
    tag(family, `ip rule ${REPLY_RULE_PREF}: from all ${REPLY_RULE_TEXT}`),
    tag(family, `route table ${LOCAL_ROUTE_TABLE}: local default dev lo scope host`),
  ];
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
