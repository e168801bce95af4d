// Pure pieces of inbound source preservation shared by the netfilter backends: the pod's policy-routing rule and local
// route (routing-apply.ts puts them in; removal and read-back scripts here, per address family), the pod's
// tcp_fwmark_accept and fwmark_reflect, and where the agent's upstream socket binds.
import { canonicalIp, parseIp, type IpFamily } from '../protocol/address.js';
import { LOCAL_ROUTE_TABLE, REPLY_MARK, REPLY_MARK_MASK, REPLY_RULE_PREF } from './constants.js';
import { podCapturesIpv6 } from './types.js';
import {
  expectedRuleLines, localRouteDeleteIfUnused, readCommands, ruleAndRouteLines, ruleDeleteLoop, ruleText, type MarkRule, type RouteFamily,
} from './policy-routing.js';

export type { RouteFamily };

/** The reply rule: packets carrying the reply mark go to the local table (policy-routing.ts writes its pieces). */
export const REPLY_RULE: MarkRule = { pref: REPLY_RULE_PREF, mark: REPLY_MARK, mask: REPLY_MARK_MASK, table: LOCAL_ROUTE_TABLE };

/** The rule's selector, as `ip rule` takes it and prints it. */
export const REPLY_RULE_TEXT = ruleText(REPLY_RULE);

/**
 * Removes the rule, then the local route unless another rule still looks the table up (the ebpf backend's, whose own
 * removal takes the route away). Harmless when nothing is there. A pod leaving the mesh only (not DEL): see backend.ts.
 */
export function replyRoutingRemoveScript(family: RouteFamily): string {
  return [
    ruleDeleteLoop(REPLY_RULE, family),
    localRouteDeleteIfUnused(REPLY_RULE, family),
    ...(family === 4 ? [`echo 0 > ${FWMARK_ACCEPT_PATH} 2>/dev/null || true`] : []),
    `echo 0 > ${FWMARK_REFLECT_PATHS[family]} 2>/dev/null || true`,
    'true',
  ].join('\n');
}

/**
 * net.ipv4.tcp_fwmark_accept (both families' TCP): an accepted socket takes its SYN's mark. Set in a pod with source
 * preservation, once its rules are in (routing-apply.ts replyMarksSetter): the app's socket of a connection from the
 * agent then carries the reply mark its SYN came with (iptables.ts podMangleRules, nftables.ts replyTable; the ebpf
 * backend's re-injection mark, RedirectBackend.appMark), so its route is the reply (or re-injection) rule's from the
 * SYN-ACK on and it advertises lo's MSS, not eth0's. A speed-up only, best effort (a
 * read-only /proc/sys in an unprivileged container refuses it): without it the connmark restore still routes every
 * reply back, one packet at a time. Not part of the drift check.
 */
export const FWMARK_ACCEPT_PATH = '/proc/sys/net/ipv4/tcp_fwmark_accept';

/**
 * net.ipv4/ipv6.fwmark_reflect: a reset or ICMP error the kernel answers a packet with takes that packet's mark. Set
 * with tcp_fwmark_accept by the netfilter backends in a pod whose reply rules leave out the per-packet mark restore
 * (iptables.ts podMangleRules, nftables.ts replyTable): the reset a closed app port answers the agent's SYN with then
 * carries the reply mark and reaches the agent through lo (a refusal at once) instead of meeting the reply guard.
 */
export const FWMARK_REFLECT_PATHS: Readonly<Record<RouteFamily, string>> = {
  4: '/proc/sys/net/ipv4/fwmark_reflect',
  6: '/proc/sys/net/ipv6/fwmark_reflect',
};

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
  return expectedRuleLines(REPLY_RULE, family).map((l) => tag(family, l));
}

/**
 * The families whose reply routing (and connmark rules) a netfilter backend installs in a pod, and so the families whose
 * client addresses the agent may bind its upstream socket to there: none without preservation; IPv4 always with it (as
 * before IPv6 existed); IPv6 too only when the backend captures IPv6 (--capture-ipv6) and the pod has an IPv6 address.
 * The ebpf backend installs none of these pieces (its egress program brings the replies of both families back its own
 * way), but the forwarder binds by the same families there.
 * One function for both sides, so the forwarder never binds an address whose replies nothing brings back. Pure.
 */
export function replyFamilies(preserve: boolean, captureFamilies: readonly IpFamily[], podIps: readonly string[]): RouteFamily[] {
  if (!preserve) return [];
  return podCapturesIpv6(podIps, captureFamilies) ? [4, 6] : [4];
}

/** First bits of IPv6 ranges that cannot stand as a source here: multicast (ff00::/8) and link-local (fe80::/10, needs a zone). */
const V6_NOT_SOURCE: readonly { prefix: bigint; bits: bigint }[] = [{ prefix: 0xffn, bits: 8n }, { prefix: 0x3fan, bits: 10n }];

/**
 * The address the agent's upstream socket to the app binds to (IP_TRANSPARENT, IPV6_TRANSPARENT), or undefined to let
 * the kernel choose (the pod's own address, as before): preservation off for the client's family (`families`, from
 * replyFamilies: fail closed, an address whose replies nothing routes back is never bound), or a client address that
 * cannot stand as a source (loopback, unspecified, multicast, broadcast, IPv6 link-local).
 */
export function upstreamSource(clientIp: string, families: readonly RouteFamily[]): string | undefined {
  const ip = parseIp(clientIp);
  if (!ip || !families.includes(ip.family)) return undefined;
  if (ip.family === 4) {
    const first = Number(ip.value >> 24n);
    return ip.value === 0n || first === 127 || first >= 224 ? undefined : canonicalIp(clientIp);
  }
  if (ip.value === 0n || ip.value === 1n) return undefined;
  return V6_NOT_SOURCE.some((r) => ip.value >> (128n - r.bits) === r.prefix) ? undefined : canonicalIp(clientIp);
}
