// Pure pieces of the ebpf backend: the per-pod config map layout, the in-pod routing pieces as shell scripts, and the
// expected/actual line notation with its drift comparison. No I/O: ebpf.ts applies and reads these through platform/.
import { addressesOf, formatWords, ipFamily, ipv6Words } from '../protocol/address.js';
import { LOCAL_ROUTE_TABLE } from './constants.js';
import { FWMARK_ACCEPT_PATH } from './reply-routing.js';
import {
  expectedRuleLines, localRouteDeleteIfUnused, readCommands, ruleAndRouteLines, ruleDeleteLoop, ruleText, type MarkRule, type RouteFamily,
} from './policy-routing.js';

/** Program and map names inside dist/bpf/redirect.o (bpf/redirect.c). */
export const PROG_IN = 'ambient_in';
export const PROG_OUT = 'ambient_out';
export const CFG_MAP = 'ambient_cfg';
export const STATS_MAP = 'ambient_stats';
/**
 * The per-CPU counters in ambient_stats, by index (enum in bpf/redirect.c). New ones go last: a program of an older
 * build still attached (before re-adoption replaces it) has a shorter map, and its missing counters are left out.
 * drop_fragment: IP fragments of TCP dropped in either direction (a fragmented SYN would bypass the socket assignment).
 * drop_ipv6: IPv6 TCP refused in either direction (IPv6 not captured; with it captured: TCP behind extension headers, or
 * a SYN from or to another address of the pod): a SYN is answered with a RST, the rest dropped.
 * out_orphaned: later packets of captured flows whose agent socket was gone (agent killed, flow reset), reset inside
 * the pod instead of leaving it in clear.
 */
export const STAT_NAMES = [
  'out_redirected', 'out_assigned', 'in_assigned', 'drop_no_listener', 'drop_spoofed', 'drop_fragment', 'drop_ipv6', 'out_orphaned',
] as const;
export type StatName = (typeof STAT_NAMES)[number];
export type Counters = Record<StatName, number>;
/** Counters as read back from an attached program's map: those its build does not have are absent. */
export type ReadCounters = Partial<Counters>;
export const OBJECT_FILE = 'redirect.o';
/** Where our filters sit on the pod interface: a fixed tc handle and priority so re-attach replaces atomically. */
export const TC_HANDLE = 0x15001;
export const TC_PRIORITY = 1;
/** Outbound packets re-injected at ingress carry this mark; the rule sends them to the local table. */
export const OUTBOUND_MARK = 0x1000;
export const RULE_PREF = 100;
export const ROUTE_TABLE = LOCAL_ROUTE_TABLE;
export const CFG_VERSION = 1;
export const CFG_SIZE = 32;
/** ambient_cfg.flags: capture IPv6 TCP at pod_ip6 (CFG_CAPTURE_IPV6 in bpf/redirect.c); without it IPv6 TCP is refused. */
export const CFG_CAPTURE_IPV6 = 0x1;

/** What the backend needs to know about a pod to steer it. */
export interface PodContext {
  /** The pod-side interface (CNI_IFNAME), where the programs are attached. */
  ifname: string;
  ips: readonly string[];
}

export interface PodConfig {
  version: number;
  ifindex: number;
  /** '0.0.0.0' when the pod has no IPv4 address. */
  podIp4: string;
  flags: number;
  /** The captured IPv6 address: set exactly when flags has CFG_CAPTURE_IPV6 (encodeConfig sets the flag for it). */
  podIp6?: string;
}

const IFNAME = /^[A-Za-z0-9_.:@-]{1,15}$/;

/** The pod's interface name, checked before it goes into a tool's argv or script. */
export function checkIfname(name: string): string {
  if (!IFNAME.test(name)) throw new Error(`invalid interface name ${JSON.stringify(name)}`);
  return name;
}

/** The addresses the programs steer for: the pod's first IPv4 one, and its first IPv6 one when IPv6 is captured. */
export interface PodAddresses {
  ip4?: string;
  ip6?: string;
}

/**
 * The addresses the programs steer for in a pod: its first IPv4 address, and with `captureIpv6` (--capture-ipv6) its
 * first IPv6 one (then an IPv6-only pod is steered too). An IPv6-only pod without `captureIpv6` gets neither: the
 * programs then steer nothing and refuse its IPv6 TCP (an enrolled pod kept refused after a restart with
 * --capture-ipv6 false; a new one is refused before this by the capture-family check). Throws for a pod without any
 * address.
 */
export function podAddresses(pod: PodContext, captureIpv6: boolean): PodAddresses {
  const [ip4] = addressesOf(pod.ips, 'ipv4');
  const [ip6] = captureIpv6 ? addressesOf(pod.ips, 'ipv6') : [];
  if (!ip4 && addressesOf(pod.ips, 'ipv6').length === 0) {
    throw new Error(`ebpf redirection needs an IPv4 or IPv6 pod address; the pod has ${pod.ips.join(', ') || 'none'}`);
  }
  return { ...(ip4 ? { ip4 } : {}), ...(ip6 ? { ip6 } : {}) };
}

/** The 16 bytes of an IPv6 address in network order (an IPv4-mapped one is IPv4: refused). */
function ip6Bytes(ip: string): Buffer {
  const words = ipFamily(ip) === 'ipv6' ? ipv6Words(ip) : undefined;
  if (words === undefined) throw new Error(`not an IPv6 address: ${JSON.stringify(ip)}`);
  const b = Buffer.alloc(16);
  words.forEach((w, i) => b.writeUInt16BE(w, 2 * i));
  return b;
}

/** struct ambient_cfg (bpf/redirect.c) for one pod; `podIp6` sets CFG_CAPTURE_IPV6. */
export function encodeConfig(cfg: Omit<PodConfig, 'version'>): Buffer {
  const b = Buffer.alloc(CFG_SIZE);
  b.writeUInt32LE(CFG_VERSION, 0);
  b.writeUInt32LE(cfg.ifindex, 4);
  Buffer.from(cfg.podIp4.split('.').map(Number)).copy(b, 8);
  b.writeUInt32LE(cfg.podIp6 ? cfg.flags | CFG_CAPTURE_IPV6 : cfg.flags & ~CFG_CAPTURE_IPV6, 12);
  if (cfg.podIp6) ip6Bytes(cfg.podIp6).copy(b, 16);
  return b;
}

export function decodeConfig(b: Buffer): PodConfig {
  if (b.length < 16) throw new Error(`ambient_cfg value has ${b.length} bytes, expected ${CFG_SIZE}`);
  const cfg: PodConfig = { version: b.readUInt32LE(0), ifindex: b.readUInt32LE(4), podIp4: [...b.subarray(8, 12)].join('.'), flags: b.readUInt32LE(12) };
  if (cfg.flags & CFG_CAPTURE_IPV6 && b.length >= CFG_SIZE) {
    cfg.podIp6 = formatWords(Array.from({ length: 8 }, (_, i) => b.readUInt16BE(16 + 2 * i)));
  }
  return cfg;
}

/** The re-injection rule: outbound packets re-injected at ingress go to the local table. */
export const REINJECT_RULE: MarkRule = { pref: RULE_PREF, mark: OUTBOUND_MARK, mask: OUTBOUND_MARK, table: ROUTE_TABLE };
const RULE_TEXT = ruleText(REINJECT_RULE);

/** The families whose re-injection rule and local route a pod gets: IPv4 always (as before IPv6), IPv6 when captured. */
export function routingFamilies(addrs: PodAddresses): RouteFamily[] {
  return addrs.ip6 ? [4, 6] : [4];
}

/** The sysctl file that turns accept_local on for the pod interface (written from inside the pod netns). */
export function acceptLocalPath(ifname: string): string {
  return `/proc/sys/net/ipv4/conf/${checkIfname(ifname)}/accept_local`;
}

/**
 * Removes what applyMarkRules (REINJECT_RULE), acceptLocalPath and source preservation's tcp_fwmark_accept set, both
 * families; harmless when absent. The two sysctls go back off only if our IPv4 rule was there.
 */
export function routingRemoveScript(ifname: string): string {
  const i = checkIfname(ifname);
  return [
    `if ip rule show pref ${RULE_PREF} | grep -q '${RULE_TEXT}'; then`,
    `  ip rule del pref ${RULE_PREF} ${RULE_TEXT}`,
    `  sysctl -qw net.ipv4.conf.${i}.accept_local=0 2>/dev/null || true`,
    `  echo 0 > ${FWMARK_ACCEPT_PATH} 2>/dev/null || true`,
    'fi',
    // Each family's route only when no other rule looks the table up (source preservation's, after a --redirect-mode switch).
    localRouteDeleteIfUnused(REINJECT_RULE, 4),
    ruleDeleteLoop(REINJECT_RULE, 6),
    localRouteDeleteIfUnused(REINJECT_RULE, 6),
    // Drop the clsact qdisc only when no filter is left on it (ours are detached before this runs).
    // (not /sys/class/net: a tool run in the pod's netns keeps the node's /sys, which lists the node's interfaces, not the pod's)
    `if ip link show dev ${i} >/dev/null 2>&1 && [ -z "$(tc filter show dev ${i} ingress)$(tc filter show dev ${i} egress)" ]; then tc qdisc del dev ${i} clsact 2>/dev/null || true; fi`,
    'true',
  ].join('\n');
}

const SEP = '@@ambient@@';

/** Prints the routing pieces for routingLines() (IPv6's too with `v6`); one exec. */
export function routingReadScript(ifname: string, v6 = false): string {
  const i = checkIfname(ifname);
  return [
    readCommands(REINJECT_RULE, 4, SEP), `echo ${SEP}`, `sysctl -n net.ipv4.conf.${i}.accept_local 2>/dev/null || echo missing`,
    ...(v6 ? [`echo ${SEP}`, readCommands(REINJECT_RULE, 6, SEP)] : []),
  ].join('; ');
}

/** IPv6 routing lines carry this prefix (as the reply routing's do). */
const IP6_TAG = 'ip6: ';

/** The routing pieces in our notation, from routingReadScript's output (IPv6's prefixed `ip6: `). */
export function routingLines(output: string, ifname: string): string[] {
  const [rules = '', routes = '', sysctl = '', rules6, routes6 = ''] = output.split(SEP);
  const lines = ruleAndRouteLines(rules, routes, ROUTE_TABLE);
  const v = sysctl.trim();
  if (v && v !== '0') lines.push(`sysctl net.ipv4.conf.${ifname}.accept_local=${v}`);
  if (rules6 !== undefined) lines.push(...ruleAndRouteLines(rules6, routes6, ROUTE_TABLE).map((l) => IP6_TAG + l));
  return lines;
}

export interface ProgTags {
  in: string;
  out: string;
}

/** A program attached at a tc direction, as found. */
export interface AttachedProg {
  direction: 'ingress' | 'egress';
  id: number;
  name: string;
  tag: string;
}

export const progLine = (ifname: string, direction: string, name: string, tag?: string, id?: number): string =>
  `tc ${direction} ${ifname}: prog ${name}${tag ? ` tag ${tag}` : ''}${id !== undefined ? ` id ${id}` : ''}`;

export const mapLine = (cfg: { podIp4: string; podIp6?: string; version: number }, id?: number): string =>
  `map ${CFG_MAP}: v${cfg.version} pod ${cfg.podIp4}${cfg.podIp6 ? ` ipv6 ${cfg.podIp6}` : ''}${id !== undefined ? ` id ${id}` : ''}`;

export const statsLine = (id?: number, counters?: ReadCounters): string =>
  `map ${STATS_MAP}: percpu counters${id !== undefined ? ` id ${id}` : ''}${counters ? ` (${STAT_NAMES.filter((n) => counters[n] !== undefined).map((n) => `${n}=${counters[n]}`).join(' ')})` : ''}`;

/** Sums one counter's per-CPU values (a percpu array lookup returns one 8-byte slot per possible CPU). */
export function sumPerCpu(value: Buffer): number {
  let total = 0;
  for (let off = 0; off + 8 <= value.length; off += 8) total += Number(value.readBigUInt64LE(off));
  return total;
}

/**
 * The pieces an enrolled pod must have, without kernel ids (they change on every load). Tags are included when known
 * (the agent learns them by loading the object at start-up), so a program from another build counts as drift.
 */
export function expectedLines(pod: PodContext, tags?: ProgTags, captureIpv6 = false): string[] {
  const i = checkIfname(pod.ifname);
  const addrs = podAddresses(pod, captureIpv6);
  return [
    progLine(i, 'ingress', PROG_IN, tags?.in),
    progLine(i, 'egress', PROG_OUT, tags?.out),
    mapLine({ podIp4: addrs.ip4 ?? '0.0.0.0', ...(addrs.ip6 ? { podIp6: addrs.ip6 } : {}), version: CFG_VERSION }),
    statsLine(),
    ...expectedRuleLines(REINJECT_RULE),
    `sysctl net.ipv4.conf.${i}.accept_local=1`,
    ...(addrs.ip6 ? expectedRuleLines(REINJECT_RULE, 6).map((l) => IP6_TAG + l) : []),
  ];
}

/** An actual line without its ids (and without its tag when the expectation has none), for comparison. */
export function comparable(line: string, withTags: boolean): string {
  const noId = line.replace(/ id \d+( \(.*\))?$/, '');
  return withTags ? noId : noId.replace(/ tag [0-9a-f]+$/, '');
}

/** Compares expected and actual lines: ids never count; tags count when the expectation carries them. */
export function diffLines(expected: readonly string[], actual: readonly string[]): { missing: string[]; unexpected: string[] } {
  const withTags = expected.some((l) => / tag [0-9a-f]+$/.test(l));
  const got = actual.map((l) => comparable(l, withTags));
  return {
    missing: expected.filter((l) => !got.includes(l)),
    unexpected: actual.filter((_, k) => !expected.includes(got[k] ?? '')),
  };
}
