// nftables rule generation for the in-pod redirection and the node's kubelet-probe SNAT, as pure functions.
// Each script replaces our table atomically (add + delete + define in one transaction), so applying twice is harmless.
import {
  AGENT_MARK, AGENT_MARK_MASK, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROBE_SNAT_IP, PROBE_SNAT_IP6, REPLY_MARK, REPLY_MARK_MASK,
} from './constants.js';

export const POD_TABLE = 'ambient-nat';
/** Source preservation's pod table (replyTable). */
export const REPLY_TABLE = 'ambient-reply';
export const HOST_TABLE = 'ambient-node-host';
export const PROBE_SET = 'probes-v4';
export const PROBE_SET6 = 'probes-v6';
/** The host table's probe set of each address family (4 or 6). */
export const PROBE_SETS = { 4: PROBE_SET, 6: PROBE_SET6 } as const;

const hex = (n: number): string => `0x${n.toString(16).padStart(8, '0')}`;

/** The pod table as `nft list table inet ambient-nat` prints it (our canonical form for drift checks): the capture. */
export function podTable(): string {
  return [
    `table inet ${POD_TABLE} {`,
    '\tchain prerouting {',
    '\t\ttype nat hook prerouting priority dstnat; policy accept;',
    '\t\tiifname "lo" return',
    `\t\tip saddr ${PROBE_SNAT_IP} meta l4proto tcp accept`,
    `\t\tip6 saddr ${PROBE_SNAT_IP6} meta l4proto tcp accept`,
    `\t\ttcp dport ${INBOUND_HBONE_PORT} accept`,
    `\t\tmeta l4proto tcp redirect to :${INBOUND_PLAINTEXT_PORT}`,
    '\t}',
    '',
    '\tchain output {',
    '\t\ttype nat hook output priority -100; policy accept;',
    `\t\tmeta mark & ${hex(AGENT_MARK_MASK)} == ${hex(AGENT_MARK)} accept`,
    '\t\toifname "lo" return',
    `\t\tmeta l4proto tcp redirect to :${OUTBOUND_PORT}`,
    '\t}',
    '}',
  ].join('\n');
}

/** The reply table's `route` chain: the per-packet ct mark restore (replyTable's `restore`). */
const REPLY_ROUTE_CHAIN = 'reply-route';

/**
 * Whether a pod's reply table (`nft list table inet ambient-reply`) has the `route` chain. Such a pod keeps it however
 * its sysctls read now: app sockets accepted while tcp_fwmark_accept was off carry no reply mark and rely on it for as
 * long as they live (iptables.ts holdsRestore).
 */
export function holdsRestore(listing: string): boolean {
  return listing.includes(`chain ${REPLY_ROUTE_CHAIN} {`);
}

/**
 * Inbound source preservation's table (iptables.ts podMangleRules says why), apart from the capture's so that an agent
 * running without it neither rewrites nor removes it (backend.ts): the agent's connections into its own pod get ct mark
 * 0x111, and the app's packets of them get it back as their mark in a `route` chain, which makes the kernel route them
 * again (policy rule, reply-routing.ts) back to the agent (the agent's own packets keep theirs: no second route lookup). `reply-guard` fails closed: a packet of such a connection
 * leaving through anything but lo (the policy rule or its route gone) is dropped; its counter shows how many were.
 * `restore`: with that `route` chain, which only a pod without tcp_fwmark_accept and fwmark_reflect needs (with them
 * the app's socket has the reply mark from its SYN, and a reset answering the agent that of its packet); every packet
 * the pod sends crosses it (plain bulk into a preserving pod 0.79x with it, 0.99x without, same run design). Once a
 * pod has it, it keeps it (holdsRestore).
 */
export function replyTable(restore: boolean): string {
  // nft prints `ct mark & 0xfffff000 | 0x111` folded into this form; written as printed so the listing compares equal.
  const keep = (~REPLY_MARK_MASK | REPLY_MARK) >>> 0;
  return [
    `table inet ${REPLY_TABLE} {`,
    '\tchain reply-mark {',
    '\t\ttype filter hook prerouting priority mangle; policy accept;',
    `\t\tmeta mark & ${hex(AGENT_MARK_MASK)} == ${hex(AGENT_MARK)} ct mark set ct mark & ${hex(keep)} | ${hex(REPLY_MARK)}`,
    // The agent's packets to the app take the reply mark, the app's socket too (tcp_fwmark_accept): see iptables.ts podMangleRules.
    `\t\tmeta mark & ${hex(AGENT_MARK_MASK)} == ${hex(AGENT_MARK)} meta mark set meta mark & ${hex(keep)} | ${hex(REPLY_MARK)}`,
    '\t}',
    '',
    ...(restore ? [
      `\tchain ${REPLY_ROUTE_CHAIN} {`,
      '\t\ttype route hook output priority mangle; policy accept;',
      `\t\tmeta mark & ${hex(AGENT_MARK_MASK)} != ${hex(AGENT_MARK)} ct mark & ${hex(REPLY_MARK_MASK)} == ${hex(REPLY_MARK)} meta mark set ct mark`,
      '\t}',
      '',
    ] : []),
    '\tchain reply-guard {',
    '\t\ttype filter hook postrouting priority mangle; policy accept;',
    `\t\toifname != "lo" ct mark & ${hex(REPLY_MARK_MASK)} == ${hex(REPLY_MARK)} counter drop`,
    '\t}',
    '}',
  ].join('\n');
}

/**
 * The host table without set elements (elements change with every pod; they are checked separately): one set and one
 * SNAT rule per family, each set holding the enrolled pods' addresses of its family.
 */
export function hostTable(): string {
  return [
    `table inet ${HOST_TABLE} {`,
    `\tset ${PROBE_SET} {`,
    '\t\ttype ipv4_addr',
    '\t}',
    '',
    `\tset ${PROBE_SET6} {`,
    '\t\ttype ipv6_addr',
    '\t}',
    '',
    '\tchain postrouting {',
    '\t\ttype nat hook postrouting priority srcnat; policy accept;',
    `\t\tmeta l4proto tcp fib saddr type local ip daddr @${PROBE_SET} snat ip to ${PROBE_SNAT_IP}`,
    `\t\tmeta l4proto tcp fib saddr type local ip6 daddr @${PROBE_SET6} snat ip6 to ${PROBE_SNAT_IP6}`,
    '\t}',
    '}',
  ].join('\n');
}

/** A script that replaces `table` with `definition` atomically. */
export function replaceTableScript(table: string, definition: string): string {
  return `add table inet ${table}\ndelete table inet ${table}\n${definition}\n`;
}

export function deleteTableScript(table: string): string {
  return `add table inet ${table}\ndelete table inet ${table}\n`;
}

/** Normalises a listing for comparison: drops set elements, handles, counters' values and blank lines. */
export function normaliseListing(listing: string): string {
  return listing
    .replace(/\n\t*elements = \{[^}]*\}/g, '')
    .split('\n')
    .map((l) => l.replace(/\s+# handle \d+$/, '').replace(/ counter packets \d+ bytes \d+/, ' counter').trimEnd())
    .filter((l) => l.trim() !== '')
    .join('\n');
}
