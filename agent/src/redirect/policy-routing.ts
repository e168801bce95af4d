// Pure in-pod policy routing pieces (`ip rule pref P fwmark M lookup T` + `local default dev lo table T`), written once for
// the netfilter backends' reply routing (reply-routing.ts) and the ebpf backend's re-injection (ebpf-config.ts): how they
// are removed and read back with `ip`. No I/O: routing-apply.ts puts them in (rtnetlink).
import type { FwmarkRule, RtFamily } from '../platform/rtnetlink.js';

/** An address family of the pieces. */
export type RouteFamily = RtFamily;

/** One fwmark rule that sends marked packets to a table holding only `local default dev lo` (routing-apply.ts puts both in). */
export type MarkRule = FwmarkRule;

const DEFAULT_ROUTE: Record<RouteFamily, string> = { 4: '0.0.0.0/0', 6: '::/0' };

/** The rule's selector, as `ip rule` takes it and prints it. */
export function ruleText(r: MarkRule): string {
  return `fwmark 0x${r.mark.toString(16)}/0x${r.mask.toString(16)} lookup ${r.table}`;
}

/** Shell lines deleting every copy of the rule (harmless when there is none). */
export function ruleDeleteLoop(r: MarkRule, family: RouteFamily): string {
  const ip = `ip -${family}`;
  return `while ${ip} rule show pref ${r.pref} | grep -q '${ruleText(r)}'; do ${ip} rule del pref ${r.pref} ${ruleText(r)} || break; done`;
}

/** Shell line deleting the table's local route (harmless when it is not there). */
export function localRouteDelete(r: MarkRule, family: RouteFamily): string {
  return `ip -${family} route del local ${DEFAULT_ROUTE[family]} dev lo table ${r.table} 2>/dev/null || true`;
}

/** Shell line deleting the table's local route unless a rule (another one than ours, already deleted) still looks it up. */
export function localRouteDeleteIfUnused(r: MarkRule, family: RouteFamily): string {
  return `if ! ip -${family} rule show | grep -q 'lookup ${r.table}\\b'; then ${localRouteDelete(r, family)}; fi`;
}

/**
 * The two read commands, joined by an `echo sep` (their output goes to ruleAndRouteLines). A table holding no route
 * does not exist, and `ip route show table` then fails: here that means no route.
 */
export function readCommands(r: MarkRule, family: RouteFamily, sep: string): string {
  return [`ip -${family} rule show pref ${r.pref}`, `echo ${sep}`, `ip -${family} route show table ${r.table} 2>/dev/null || true`].join('; ');
}

/** The rules (as `ip rule show` prints them) and the table's routes, in our notation. */
export function ruleAndRouteLines(rules: string, routes: string, table: number): string[] {
  const lines: string[] = [];
  for (const l of rules.split('\n')) {
    const m = /^(\d+):\s+(.*)$/.exec(l.trim());
    if (m) lines.push(`ip rule ${m[1]}: ${m[2]?.replace(/\s+/g, ' ')}`);
  }
  for (const l of routes.split('\n')) if (l.trim()) lines.push(`route table ${table}: ${l.trim().replace(/\s+/g, ' ')}`);
  return lines;
}

/** How `ip route show table` prints the local default route: IPv6 routes show their metric and preference, not a scope. */
const LOCAL_ROUTE_SHOWN: Record<RouteFamily, string> = { 4: 'local default dev lo scope host', 6: 'local default dev lo metric 1024 pref medium' };

/** What a pod holding the rule and its local route reads back as. */
export function expectedRuleLines(r: MarkRule, family: RouteFamily = 4): string[] {
  return [`ip rule ${r.pref}: from all ${ruleText(r)}`, `route table ${r.table}: ${LOCAL_ROUTE_SHOWN[family]}`];
}
