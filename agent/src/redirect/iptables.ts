// iptables rule generation for the in-pod redirection and the node's kubelet-probe SNAT, as pure functions.
// Rules are written in iptables-save's canonical form so a save of the namespace can be compared line by line.
import {
  AGENT_MARK, AGENT_MARK_MASK, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROBE_SNAT_IP, PROBE_SNAT_IP6, REPLY_MARK, REPLY_MARK_MASK,
} from './constants.js';

export const POD_CHAINS = { prerouting: 'AMBIENT_PRERT', output: 'AMBIENT_OUTPUT' } as const;
export const HOST_CHAIN = 'AMBIENT_POSTRT';
/**
 * Source preservation's fail-closed guard (pod mangle table, POSTROUTING). Not AMBIENT_POSTRT: that name is the node's
 * nat chain (HOST_CHAIN), and a pod chain of the same name would make the two ambiguous in listings and greps.
 */
export const REPLY_GUARD_CHAIN = 'AMBIENT_REPLY_GUARD';
export const PROBE_IPSET = 'ambient-node-probes-v4';
export const PROBE_IPSET6 = 'ambient-node-probes-v6';

const hex = (n: number): string => `0x${n.toString(16)}`;

/** The address families the pod rules are installed for: iptables (IPv4) and ip6tables (IPv6). */
export type Family = 4 | 6;

/** The save and restore tools of a family. */
export const TOOLS: Record<Family, { save: string; restore: string }> = {
  4: { save: 'iptables-save', restore: 'iptables-restore' },
  6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
};

/** How IPv6 lines are told apart from IPv4 ones in drift reports and `ambient-node rules`. */
export const IP6_PREFIX = 'ip6tables: ';

/** The kubelet-probe pieces of a family: the node's ipset of enrolled pod addresses (and its ipset family), the SNAT source. */
export const PROBE: Record<Family, { ipset: string; ipsetFamily: 'inet' | 'inet6'; snat: string; prefix: number }> = {
  4: { ipset: PROBE_IPSET, ipsetFamily: 'inet', snat: PROBE_SNAT_IP, prefix: 32 },
  6: { ipset: PROBE_IPSET6, ipsetFamily: 'inet6', snat: PROBE_SNAT_IP6, prefix: 128 },
};

/**
 * The rules of our chains (nat table), one per line, as iptables-save prints them. IPv6 gets the same capture, its
 * kubelet probes (SNATed by the node to PROBE_SNAT_IP6) included: until the agent listens on IPv6, other TCP redirected
 * there meets no listener and is refused, so an enrolled pod's IPv6 traffic (link-local included) never bypasses the mesh.
 */
export function podChainRules(family: Family = 4): string[] {
  const pre = POD_CHAINS.prerouting;
  const out = POD_CHAINS.output;
  return [
    `-A ${pre} -i lo -j RETURN`,
    `-A ${pre} -s ${PROBE[family].snat}/${PROBE[family].prefix} -p tcp -j ACCEPT`,
    `-A ${pre} -p tcp -m tcp --dport ${INBOUND_HBONE_PORT} -j ACCEPT`,
    `-A ${pre} -p tcp -j REDIRECT --to-ports ${INBOUND_PLAINTEXT_PORT}`,
    `-A ${out} -m mark --mark ${hex(AGENT_MARK)}/${hex(AGENT_MARK_MASK)} -j ACCEPT`,
    `-A ${out} -o lo -j RETURN`,
    `-A ${out} -p tcp -j REDIRECT --to-ports ${OUTBOUND_PORT}`,
  ];
}

/**
 * Inbound source preservation (mangle table, the nat chains' names and the guard): a connection the agent opens to its
 * own pod (its packets carry the agent mark when they come back in through lo) gets connmark 0x111; the app's packets of
 * that connection get it back as their mark, which re-routes them (policy rule, reply-routing.ts) to the agent's
 * transparent socket instead of out of the pod toward the client's address. Istio's in-pod rules; nat needs nothing
 * (replies are never NEW). The guard fails closed: a packet of such a connection about to leave through anything but
 * lo (the policy rule or its route deleted, not yet repaired) is dropped, never sent toward the client in clear.
 * The agent's own packets of these connections (agent mark) keep their mark: they go to the pod's own address, which
 * needs no reply routing, and a mark changed in mangle OUTPUT makes the kernel route the packet again (per packet).
 * The agent's packets reach the app with the reply mark instead (mangle PREROUTING, once the CONNMARK line has seen the
 * agent mark; on lo a mark changed there re-routes nothing): with net.ipv4.tcp_fwmark_accept (reply-routing.ts) the
 * app's socket takes its SYN's mark (or, after SYN cookies, its final ACK's: hence every packet, not the SYN alone), so
 * its SYN-ACK is routed by the reply rule through lo and advertises lo's MSS (64 KB segments, not the 1448 bytes of the
 * route toward the client through eth0, which cut bulk throughput by up to half), and its packets need no re-routing.
 * ip6tables takes (and saves) the same lines: nothing in them depends on the family, and ip6tables' mangle OUTPUT
 * re-routes a packet whose mark it changed, as iptables' does. `_family` names the table they are for (callers say it).
 * `restore`: with the OUTPUT restore (and its jump, podMangleJumpRules), which only a pod without tcp_fwmark_accept and
 * fwmark_reflect needs (with them the app's socket has the reply mark from its SYN, and a reset the pod's kernel answers
 * the agent with, a closed port's, that of the packet it answers: reply-routing.ts); every packet the pod sends crosses mangle OUTPUT, a
 * `route` chain under iptables-nft, and a fresh pod without the jump never gets that chain. Once a pod has it, it
 * keeps it (holdsRestore).
 */
export function podMangleRules(_family: Family = 4, restore = true): string[] {
  const pre = POD_CHAINS.prerouting;
  const out = POD_CHAINS.output;
  const reply = `${hex(REPLY_MARK)}/${hex(REPLY_MARK_MASK)}`;
  return [
    `-A ${pre} -m mark --mark ${hex(AGENT_MARK)}/${hex(AGENT_MARK_MASK)} -j CONNMARK --set-xmark ${reply}`,
    ...(restore ? [`-A ${out} -m mark ! --mark ${hex(AGENT_MARK)}/${hex(AGENT_MARK_MASK)} -m connmark --mark ${reply} -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff`] : []),
    `-A ${REPLY_GUARD_CHAIN} ! -o lo -m connmark --mark ${reply} -j DROP`,
    // After the CONNMARK line in the same chain (the agent mark must still be there for it).
    `-A ${pre} -m mark --mark ${hex(AGENT_MARK)}/${hex(AGENT_MARK_MASK)} -j MARK --set-xmark ${reply}`,
  ];
}

/**
 * Whether a pod's mangle table (`iptables-save` section) holds any part of the OUTPUT restore: its rule or its jump.
 * Such a pod keeps the restore (installed whole, checked whole) however its sysctls read now: app sockets accepted
 * while tcp_fwmark_accept was off carry no reply mark and rely on it for as long as they live. Only a fresh pod, or
 * one that never had it, goes without.
 */
export function holdsRestore(mangle: string): boolean {
  const out = POD_CHAINS.output;
  return ownedNatLines(mangle, POD_MANGLE_CHAINS).some((l) => l === `-A OUTPUT -j ${out}` || l.startsWith(`-A ${out} `));
}

/** Our chains in a pod's mangle table (source preservation): the nat ones' names, and the guard. */
export const POD_MANGLE_CHAINS: readonly string[] = [POD_CHAINS.prerouting, POD_CHAINS.output, REPLY_GUARD_CHAIN];

/** Jumps from the mangle table's built-in chains into ours (`restore`: the OUTPUT one too, see podMangleRules). */
export function podMangleJumpRules(restore = true): string[] {
  const [pre, out] = podJumpRules();
  return [pre as string, ...(restore ? [out as string] : []), `-A POSTROUTING -j ${REPLY_GUARD_CHAIN}`];
}

/** Tables our pod chains live in; `mangle` only while source preservation is on. */
export type PodTable = 'nat' | 'mangle';

/** How mangle lines are told apart from nat ones (the chain names are the same) in drift reports and `ambient-node rules`. */
export const MANGLE_PREFIX = 'mangle: ';

/** Jumps from the built-in chains into ours. */
export function podJumpRules(): string[] {
  return [`-A PREROUTING -j ${POD_CHAINS.prerouting}`, `-A OUTPUT -j ${POD_CHAINS.output}`];
}

/**
 * The node's probe SNAT of one family (iptables, or ip6tables for 6): TCP from a local socket to an enrolled pod address
 * leaves as 169.254.7.127 (IPv6: fd16:9254:7127:1337:ffff:ffff:ffff:ffff), which the pod's rules let through to the app
 * (Istio's rule). With `kubeletCgroup` only sockets of that cgroup v2 path (the kubelet's) are SNATed, on both families;
 * without it any local process, hostNetwork pods included, reaches enrolled pods' apps in plaintext.
 */
export function hostChainRules(kubeletCgroup = '', family: Family = 4): string[] {
  const cgroup = kubeletCgroup ? ` -m cgroup --path "${kubeletCgroup}"` : '';
  const { ipset, snat } = PROBE[family];
  return [`-A ${HOST_CHAIN} -p tcp -m owner --socket-exists${cgroup} -m set --match-set ${ipset} dst -j SNAT --to-source ${snat}`];
}

export function hostJumpRules(): string[] {
  return [`-A POSTROUTING -j ${HOST_CHAIN}`];
}

/** The addresses `ipset save <set>` lists as members of `set` (as ipset prints them). */
export function ipsetMembers(save: string, set: string): string[] {
  const prefix = `add ${set} `;
  return save.split('\n').filter((l) => l.startsWith(prefix)).map((l) => l.slice(prefix.length).split(' ')[0] ?? '').filter(Boolean);
}

/** The part of a whole `iptables-save` (every table) that belongs to one table, as `iptables-save -t <table>` prints it. */
export function tableSection(save: string, table: PodTable): string {
  const lines = save.split('\n');
  const start = lines.findIndex((l) => l.trim() === `*${table}`);
  if (start < 0) return '';
  const end = lines.findIndex((l, i) => i > start && l.trim() === 'COMMIT');
  return lines.slice(start, end < 0 ? undefined : end + 1).join('\n');
}

/** Lines of `iptables-save -t nat` (or `-t mangle`) that belong to us: our chains' rules and the jumps into them. */
export function ownedNatLines(save: string, chains: readonly string[]): string[] {
  return save
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l.startsWith('-A ') && chains.some((c) => l.startsWith(`-A ${c} `) || l.endsWith(`-j ${c}`)));
}

/**
 * An iptables-restore --noflush input that makes the nat table hold exactly our chains and one jump into each,
 * given the current `iptables-save -t nat` output. Declaring our chains flushes them; stray duplicate jumps are deleted.
 */
export function restoreInput(current: string, chains: readonly string[], chainRules: string[], jumps: string[], table: PodTable = 'nat'): string {
  const have = ownedNatLines(current, chains).filter((l) => jumps.includes(l));
  const lines = [`*${table}`, ...chains.map((c) => `:${c} - [0:0]`)];
  for (const jump of jumps) {
    const count = have.filter((l) => l === jump).length;
    if (count === 0) lines.push(jump);
    for (let i = 1; i < count; i++) lines.push(jump.replace(/^-A /, '-D '));
  }
  lines.push(...chainRules, 'COMMIT', '');
  return lines.join('\n');
}

/**
 * Whether restoreInput's input would change anything: false when the table (`current`, a save of it) already holds
 * exactly our chains' rules in order and one jump into each, as verify sees them (diffOwned). Re-adoption and repair
 * then skip the restore exec, which costs more than the save that answered the question.
 */
export function restoreNeeded(current: string, chains: readonly string[], chainRules: string[], jumps: string[]): boolean {
  const d = diffOwned([...jumps, ...chainRules], ownedNatLines(current, chains));
  return d.missing.length > 0 || d.unexpected.length > 0;
}

/**
 * Whether restoreInput's input leaves the table exactly as verify expects it: it flushes and refills our chains and
 * removes second copies of our jumps, but leaves any other jump into our chains (a rule of someone else's ending in
 * `-j AMBIENT_...`) where it is. Pure.
 */
export function restoreLeavesExact(current: string, chains: readonly string[], jumps: readonly string[]): boolean {
  return ownedNatLines(current, chains).every((l) => chains.some((c) => l.startsWith(`-A ${c} `)) || jumps.includes(l));
}

/**
 * Transactions an iptables-restore input commits: one per table (iptables-nft commits each COMMIT section on its own).
 * Counting them is only sound because each section restoreInput makes changes something (it re-adds our chains' rules:
 * test/unit/rules-seen.test.ts): the kernel does not move the generation for a transaction that changes nothing, and a
 * writer elsewhere could then fill the gap unseen. Pure.
 */
export function restoreCommits(input: string): number {
  return input.split('\n').filter((l) => l.trim() === 'COMMIT').length;
}

/** Whether every tool's `-V` says it is the nf_tables variant (iptables-nft), not legacy (x_tables). Pure. */
export function toolsOnNfTables(versions: readonly string[]): boolean {
  return versions.length > 0 && versions.every((v) => / \(nf_tables\)\s*$/.test(v.trim()));
}

/** An iptables-restore --noflush input removing our jumps and chains (given the current save). */
export function removeInput(current: string, chains: readonly string[], table: PodTable = 'nat'): string {
  const owned = ownedNatLines(current, chains);
  const present = new Set(current.split('\n').filter((l) => l.startsWith(':')).map((l) => l.slice(1).split(' ')[0]));
  const lines = [`*${table}`];
  for (const l of owned) if (!chains.some((c) => l.startsWith(`-A ${c} `))) lines.push(l.replace(/^-A /, '-D '));
  for (const c of chains) if (present.has(c)) lines.push(`-F ${c}`, `-X ${c}`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** Orders rule lines by chain (stable within a chain), the way iptables-save groups them. */
function byChain(lines: string[]): string[] {
  // The chain is taken once per line, not in every comparison (re-adoption sorts two saves per pod).
  const keyed = lines.map((l, i) => ({ l, i, chain: l.split(' ', 2)[1] ?? '' }));
  return keyed.sort((a, b) => (a.chain < b.chain ? -1 : a.chain > b.chain ? 1 : a.i - b.i)).map((x) => x.l);
}

/** The differences between what should be there and what is: missing and unexpected lines of ours. */
export function diffOwned(expectedLines: string[], actualLines: string[]): { missing: string[]; unexpected: string[] } {
  const expected = byChain(expectedLines);
  const actual = byChain(actualLines);
  const rest = [...actual];
  const missing: string[] = [];
  for (const e of expected) {
    const i = rest.indexOf(e);
    if (i === -1) missing.push(e);
    else rest.splice(i, 1);
  }
  // Order matters inside a chain: compare sequences too.
  if (missing.length === 0 && rest.length === 0 && expected.join('\n') !== actual.join('\n')) {
    return { missing: expected, unexpected: actual };
  }
  return { missing, unexpected: rest };
}
