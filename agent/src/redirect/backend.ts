// The iptables and nftables backends, the factory, and the removal of every backend's in-pod pieces (the contract is in
// types.ts, ebpf in ebpf.ts). Rules come from the pure generators; this file only applies, reads back and compares them.
// ebpf.ts (and its libbpf bindings) is a dynamic import: loaded in ebpf mode, or when pod rules are removed.
import type { RedirectMode } from '../config.js';
import { settleAll } from '../errors.js';
import { runTool } from '../platform/exec.js';
import type { Netns } from '../platform/netns.js';
import { canonicalIp, ipFamily } from '../protocol/address.js';
import * as ipt from './iptables.js';
import * as nft from './nftables.js';
import {
  expectedReplyRoutingLines, REPLY_RULE, replyFamilies, replyRoutingLines, replyRoutingReadScript, replyRoutingRemoveScript, type RouteFamily,
} from './reply-routing.js';
import { applyMarkRules, replyMarksSetter, replyMarksOn } from './routing-apply.js';
import { captureFamiliesFor, type InstallOptions, type PodContext, type RedirectBackend, type RuleDrift } from './types.js';
import { readNfGeneration, type NfGeneration } from '../platform/nf-generation.js';
import { applyIpset, ipsetRequest } from '../platform/ipset-netlink.js';
import { FIRST_GENERATION, provenSeen, rulesDigest, stillExact, type RulesSeen } from './rules-seen.js';
import type { IpFamily } from '../protocol/address.js';
import { AGENT_MARK } from './constants.js';

export type { PodContext, RedirectBackend, RuleDrift };

const ok = (missing: string[], unexpected: string[], actual: string[]): RuleDrift => ({
  ok: missing.length === 0 && unexpected.length === 0,
  missing,
  unexpected,
  actual,
});

const POD_CHAINS = Object.values(ipt.POD_CHAINS);
/** Our chains per pod table: mangle adds source preservation's guard to the nat chains' names. */
const TABLE_CHAINS: Record<ipt.PodTable, readonly string[]> = { nat: POD_CHAINS, mangle: ipt.POD_MANGLE_CHAINS };
const FAMILIES: readonly ipt.Family[] = [4, 6];
/** The pod addresses of a backend call without a pod (`rules` of an unknown one): none, so IPv4's pieces only. */
const NO_IPS: readonly string[] = [];

/**
 * A probe target's family and canonical text (the set of its family holds it); throws for text that is not an address.
 * IPv4-mapped IPv6 counts as the IPv4 address it maps.
 */
function probeTarget(ip: string): { family: ipt.Family; addr: string } {
  const addr = canonicalIp(ip);
  if (addr === undefined) throw new Error(`not a pod address for the probe set: ${JSON.stringify(ip)}`);
  return { family: ipFamily(addr) === 'ipv6' ? 6 : 4, addr };
}

/** The canonical text of each address in `addrs` (what probeTarget puts in a set); anything else is left out. */
function canonicalSet(addrs: string[]): Set<string> {
  return new Set(addrs.flatMap((a) => canonicalIp(a) ?? []));
}

/** Both families' choices of the mangle OUTPUT restore an install could keep (installPod): all four, or with it only. */
const RESTORE_CHOICES: Record<'marksOn' | 'marksOff', readonly (readonly [boolean, boolean])[]> = {
  marksOn: [[false, false], [false, true], [true, false], [true, true]],
  marksOff: [[true, true]],
};

/** Options of the netfilter backends. */
export interface NetfilterOptions {
  /** Inbound source preservation: the connmark rules and the pod's reply routing are installed and verified. No default. */
  preserveSource: boolean;
  /** --capture-ipv6: the agent carries IPv6 TCP (its IPv6 listeners), so the backend declares it captured. Default off. */
  captureIpv6?: boolean;
  /** Where a backend says what it could not do but went on without (once each): the agent's log. */
  warn?: (msg: string) => void;
}

/*
 * Source preservation's in-pod pieces (reply routing, mangle chains, nft reply table) are installed while the flag is on,
 * per family as replyFamilies says (IPv6's with --capture-ipv6 in a pod with an IPv6 address), and removed only when the
 * pod leaves the mesh while it runs (removePodRules, both families whatever the flags; DEL leaves them to die with the
 * namespace). An agent running with it off neither installs nor removes them, nor calls
 * them drift: pods it adopts (after a restart or a take-over) may still have relays whose upstream socket is bound to
 * the client's address, whose app replies would otherwise leave the pod in clear once the pieces were gone.
 */

/** Removes the reply routing of both families (a pod leaving the mesh only). */
async function removeReplyRouting(netns: Netns): Promise<void> {
  await Promise.all(FAMILIES.map((family) => runTool('sh', ['-c', replyRoutingRemoveScript(family)], { netns: netns.toolPath })));
}

/**
 * The reply routing's drift: both families are read (and shown); the expected lines of `families` must be there, and a
 * family outside them is left alone whatever it holds (preservation off, or IPv6 no longer captured: see above).
 */
async function verifyReplyRouting(netns: Netns, families: readonly RouteFamily[]): Promise<{ missing: string[]; unexpected: string[]; actual: string[] }> {
  const per = await Promise.all(FAMILIES.map(async (family) => {
    const actual = replyRoutingLines(await runTool('sh', ['-c', replyRoutingReadScript(family)], { netns: netns.toolPath }), family);
    if (!families.includes(family)) return { missing: [], unexpected: [], actual };
    const expected = expectedReplyRoutingLines(family);
    return { missing: expected.filter((l) => !actual.includes(l)), unexpected: actual.filter((l) => !expected.includes(l)), actual };
  }));
  return { missing: per.flatMap((p) => p.missing), unexpected: per.flatMap((p) => p.unexpected), actual: per.flatMap((p) => p.actual) };
}

/** One table's part of a pod's iptables rules: the table, our chains, their rules, the jumps into them. */
type TableRules = [table: ipt.PodTable, chains: readonly string[], rules: string[], jumps: string[]];

class IptablesBackend implements RedirectBackend {
  readonly name = 'iptables' as const;
  /** ip6tables holds the IPv6 rules; IPv6 TCP is carried with --capture-ipv6 (the agent's IPv6 listeners), else refused. */
  readonly captureFamilies: readonly IpFamily[];
  readonly appMark = AGENT_MARK;

  private readonly preserveSource: boolean;

  /** tcp_fwmark_accept and fwmark_reflect on in a pod with source preservation (see installPod for when; routing-apply.ts replyMarksSetter). */
  private readonly setReplyMarks: ReturnType<typeof replyMarksSetter>;

  /**
   * Whether every save and restore tool writes nf_tables (iptables-nft), so that a namespace's nf_tables generation
   * covers the pod's rules (RulesSeen); found by prepare(). Legacy iptables writes x_tables, which no generation covers: no shortcut.
   */
  private onNfTables = false;

  /** `kubeletCgroup`: limit the probe SNAT to the kubelet's cgroup v2 path ('' = any local process, Istio's default). */
  constructor(private readonly kubeletCgroup: string, opts: NetfilterOptions) {
    this.preserveSource = opts.preserveSource;
    this.captureFamilies = captureFamiliesFor(opts.captureIpv6 ?? false);
    this.setReplyMarks = replyMarksSetter(opts.warn);
  }

  /** Finds whether the save and restore tools that write pod rules are iptables-nft (see onNfTables). */
  async prepare(): Promise<void> {
    const tools = FAMILIES.flatMap((family) => [ipt.TOOLS[family].save, ipt.TOOLS[family].restore]);
    this.onNfTables = ipt.toolsOnNfTables(await Promise.all(tools.map((tool) => runTool(tool, ['-V']).catch(() => ''))));
  }

  /** The namespace's generation where it covers our rules (iptables-nft), else undefined. */
  private generation(netns: Netns): NfGeneration | undefined {
    return this.onNfTables ? readNfGeneration(netns) : undefined;
  }

  /** The digest of both families' rules (as verifyPod compares them), each with the OUTPUT restore or without it. */
  private digest(pod: PodContext | undefined, restore: (family: ipt.Family) => boolean): string {
    return rulesDigest(this.name, FAMILIES.map((family) => {
      const mangle = this.mangleRules(family, pod, restore(family));
      return [...ipt.podJumpRules(), ...ipt.podChainRules(family), '|', ...(mangle.length ? [...ipt.podMangleJumpRules(restore(family)), ...mangle] : [])];
    }));
  }

  /** The digests of every set of rules installPod would keep as they are, given the reply-mark sysctls (see there). */
  private keptDigests(pod: PodContext | undefined, marksOn: boolean): string[] {
    return RESTORE_CHOICES[marksOn ? 'marksOn' : 'marksOff'].map(([r4, r6]) => this.digest(pod, (f) => (f === 6 ? r6 : r4)));
  }

  /** The families whose reply routing and mangle rules a pod gets (reply-routing.ts replyFamilies). */
  private replyFamilies(pod?: PodContext): RouteFamily[] {
    return replyFamilies(this.preserveSource, this.captureFamilies, pod?.ips ?? NO_IPS);
  }

  /**
   * The mangle rules a family should hold ([] without source preservation, or for a family it does not cover in `pod`),
   * with the OUTPUT restore or without it (`restore`, ipt.podMangleRules; see installPod).
   */
  private mangleRules(family: ipt.Family, pod: PodContext | undefined, restore: boolean): string[] {
    return this.replyFamilies(pod).includes(family) ? ipt.podMangleRules(family, restore) : [];
  }

  /**
   * IPv4 and IPv6 in parallel: each family's tools and tables are separate; one iptables-restore per family writes both
   * tables, mangle before nat. Source preservation's pieces go in first (the reply routing, then the mangle rules), the
   * nat capture last: once inbound is redirected to the agent, the agent dials the app from the client's address and
   * the app's replies must already find their way back. A fresh pod has no listener of the agent yet, so nothing can be
   * carried before everything is in: its pieces go in at once (and its tables are not read). Not fresh (re-adoption,
   * repair, an ADD into a namespace a DEL left rules in): the saves are read while the reply routing goes in, and a table
   * that already holds exactly our rules is not restored (re-adoption after a restart then runs one save per family).
   * The mangle OUTPUT restore (and its jump) only where it was needed before this install, as NftablesBackend does with
   * its `route` chain: not where tcp_fwmark_accept and fwmark_reflect are on (a fresh pod gets them first); where one
   * was off it goes in, the sysctls after the pieces (where both are on, nothing is written); and a table holding any of it keeps it whole (ipt.holdsRestore).
   * `seen` (re-adoption after a restart): tables still at the generation where they were proved to hold what this install
   * would keep are neither saved nor restored. Resolves with where the tables are proved exact after it (RulesSeen):
   * only our restores' commits between the generation read before and the one after, and tables our restores leave
   * exact: a fresh pod's only where nothing was ever committed in its namespace (a fresh guess that is wrong leaves a
   * second jump), a save's only where it held no jump into our chains but the expected ones (restoreInput keeps others).
   */
  async installPod(netns: Netns, pod?: PodContext, opts: InstallOptions = {}): Promise<RulesSeen | undefined> {
    const families = this.replyFamilies(pod);
    if (families.length > 0 && opts.fresh) this.setReplyMarks(netns, true, families);
    const marksOn = replyMarksOn(netns, families);
    const routing = applyMarkRules(netns, REPLY_RULE, families);
    const routed = opts.fresh ? undefined : routing;
    const before = this.generation(netns);
    const unchanged = !opts.fresh && stillExact(opts.seen, before, this.keptDigests(pod, marksOn));
    const restores = new Set<ipt.Family>();
    let commits = 0;
    let provable = !opts.fresh || before?.gen === FIRST_GENERATION;
    await settleAll([routing, ...(unchanged ? [] : FAMILIES).map(async (family) => {
      const tools = ipt.TOOLS[family];
      const save = opts.fresh ? '' : await runTool(tools.save, [], { netns: netns.toolPath });
      const restore = !marksOn || ipt.holdsRestore(ipt.tableSection(save, 'mangle'));
      if (restore) restores.add(family);
      const mangle = this.mangleRules(family, pod, restore);
      // Without preservation the mangle table is left as it is (see above): never flushed, never removed here.
      const tables: TableRules[] = [
        ...(mangle.length > 0 ? [['mangle', ipt.POD_MANGLE_CHAINS, mangle, ipt.podMangleJumpRules(restore)] satisfies TableRules] : []),
        ['nat', POD_CHAINS, ipt.podChainRules(family), ipt.podJumpRules()],
      ];
      const input = tables.map(([table, chains, rules, jumps]) => {
        const current = ipt.tableSection(save, table);
        if (!opts.fresh && !ipt.restoreNeeded(current, chains, rules, jumps)) return '';
        if (!ipt.restoreLeavesExact(current, chains, jumps)) provable = false;
        return ipt.restoreInput(current, chains, rules, jumps, table);
      }).join('');
      await routed;
      if (input !== '') {
        commits += ipt.restoreCommits(input);
        await runTool(tools.restore, ['--noflush', '-w', '5'], { netns: netns.toolPath, input });
      }
    })], `installing the redirection rules in ${netns.path} failed`);
    if (families.length > 0 && !opts.fresh && !marksOn) this.setReplyMarks(netns, true, families);
    if (unchanged) return opts.seen;
    return provable ? provenSeen(before, this.generation(netns), commits, this.digest(pod, (f) => restores.has(f))) : undefined;
  }

  /** Both families and both tables; IPv6 lines carry the `ip6tables: ` prefix, mangle lines `mangle: `, then the reply routing. */
  async verifyPod(netns: Netns, pod?: PodContext): Promise<RuleDrift> {
    const marksOn = replyMarksOn(netns, this.replyFamilies(pod));
    const restores = new Set<ipt.Family>();
    const before = this.generation(netns);
    const per = await Promise.all(FAMILIES.map(async (family) => {
      const save = await runTool(ipt.TOOLS[family].save, [], { netns: netns.toolPath }); // every table in one exec
      const [nat, mangle] = [ipt.tableSection(save, 'nat'), ipt.tableSection(save, 'mangle')];
      const tag = (l: string): string => (family === 6 ? `${ipt.IP6_PREFIX}${l}` : l);
      const actualNat = ipt.ownedNatLines(nat, POD_CHAINS);
      const dn = ipt.diffOwned([...ipt.podJumpRules(), ...ipt.podChainRules(family)], actualNat);
      const actualMangle = ipt.ownedNatLines(mangle, ipt.POD_MANGLE_CHAINS);
      // Without preservation (or for a family it does not cover) the mangle chains are neither expected nor drift. The
      // OUTPUT restore is expected where installPod would put it: a sysctl off, or any of it in the table.
      const restore = !marksOn || ipt.holdsRestore(mangle);
      if (restore) restores.add(family);
      const wantMangle = this.mangleRules(family, pod, restore);
      const dm = wantMangle.length ? ipt.diffOwned([...ipt.podMangleJumpRules(restore), ...wantMangle], actualMangle) : { missing: [], unexpected: [] };
      const m = (l: string): string => tag(`${ipt.MANGLE_PREFIX}${l}`);
      return {
        missing: [...dn.missing.map(tag), ...dm.missing.map(m)],
        unexpected: [...dn.unexpected.map(tag), ...dm.unexpected.map(m)],
        actual: [...actualNat.map(tag), ...actualMangle.map(m)],
      };
    }));
    // The tables held exactly what they should, read at one generation: that is what the pod's record keeps (RulesSeen).
    const exact = per.every((p) => p.missing.length === 0 && p.unexpected.length === 0);
    const seen = exact ? provenSeen(before, this.generation(netns), 0, this.digest(pod, (f) => restores.has(f))) : undefined;
    const r = await verifyReplyRouting(netns, this.replyFamilies(pod));
    const drift = ok([...per.flatMap((p) => p.missing), ...r.missing], [...per.flatMap((p) => p.unexpected), ...r.unexpected], [...per.flatMap((p) => p.actual), ...r.actual]);
    return { ...drift, expected: this.expectedLines(pod, (f) => restores.has(f)), ...(seen ? { seen } : {}) };
  }

  /** As a fresh pod gets them where its reply-mark sysctls can be set (without the OUTPUT restore: see installPod). */
  expectedPodRules(pod?: PodContext): string[] {
    return this.expectedLines(pod, () => false);
  }

  /** The pod's expected lines in `rules` notation, each family's mangle table with the OUTPUT restore or without it. */
  private expectedLines(pod: PodContext | undefined, restore: (family: ipt.Family) => boolean): string[] {
    const tag = (family: ipt.Family, l: string): string => (family === 6 ? `${ipt.IP6_PREFIX}${l}` : l);
    return [
      ...FAMILIES.flatMap((family) => {
        const mangle = this.mangleRules(family, pod, restore(family));
        return [
          ...[...ipt.podJumpRules(), ...ipt.podChainRules(family)].map((l) => tag(family, l)),
          ...(mangle.length ? [...ipt.podMangleJumpRules(restore(family)), ...mangle] : []).map((l) => tag(family, `${ipt.MANGLE_PREFIX}${l}`)),
        ];
      }),
      ...this.replyFamilies(pod).flatMap((f) => expectedReplyRoutingLines(f)),
    ];
  }

  /** Both families, each its ipset and its table's SNAT chain (ip6tables for IPv6); the cgroup limit applies to both. */
  async installHost(): Promise<void> {
    await Promise.all(FAMILIES.map(async (family) => {
      const { ipset, ipsetFamily } = ipt.PROBE[family];
      const tools = ipt.TOOLS[family];
      await runTool('ipset', ['create', ipset, 'hash:ip', 'family', ipsetFamily, 'comment', '-exist']);
      const current = await runTool(tools.save, ['-t', 'nat']);
      const input = ipt.restoreInput(current, [ipt.HOST_CHAIN], ipt.hostChainRules(this.kubeletCgroup, family), ipt.hostJumpRules());
      try {
        await runTool(tools.restore, ['--noflush', '-w', '5'], { input });
      } catch (err) {
        if (!this.kubeletCgroup) throw err;
        // The kernel resolves the path when the rule is loaded: a wrong one is the likely cause.
        throw new Error(`cannot install the probe SNAT limited to cgroup ${this.kubeletCgroup} (does that cgroup v2 path exist, as the agent sees the cgroup tree?)`, { cause: err });
      }
    }));
  }

  /** Both families; IPv6 lines (the ip6tables rules and the v6 ipset) carry the `ip6tables: ` prefix. */
  async verifyHost(): Promise<RuleDrift> {
    const per = await Promise.all(FAMILIES.map(async (family) => {
      const tag = (l: string): string => (family === 6 ? `${ipt.IP6_PREFIX}${l}` : l);
      const { ipset } = ipt.PROBE[family];
      const actual = ipt.ownedNatLines(await runTool(ipt.TOOLS[family].save, ['-t', 'nat']), [ipt.HOST_CHAIN]);
      const d = ipt.diffOwned([...ipt.hostJumpRules(), ...ipt.hostChainRules(this.kubeletCgroup, family)], actual);
      try {
        await runTool('ipset', ['list', '-n', ipset]);
        actual.push(`ipset ${ipset}`);
      } catch {
        d.missing.push(`ipset ${ipset}`);
      }
      return { missing: d.missing.map(tag), unexpected: d.unexpected.map(tag), actual: actual.map(tag) };
    }));
    return ok(per.flatMap((p) => p.missing), per.flatMap((p) => p.unexpected), per.flatMap((p) => p.actual));
  }

  /** Into the ipset of the address's family, over netlink from the agent itself (no `ipset` process per pod). */
  async addProbeTarget(ip: string, podUid: string): Promise<void> {
    const { family, addr } = probeTarget(ip);
    applyIpset(ipsetRequest('add', ipt.PROBE[family].ipset, addr, podUid || 'unknown'));
  }

  async removeProbeTarget(ip: string): Promise<void> {
    const { family, addr } = probeTarget(ip);
    applyIpset(ipsetRequest('del', ipt.PROBE[family].ipset, addr));
  }

  async probeTargets(): Promise<Set<string>> {
    const members = await Promise.all(FAMILIES.map(async (family) => {
      const { ipset } = ipt.PROBE[family];
      return ipt.ipsetMembers(await runTool('ipset', ['save', ipset]), ipset);
    }));
    return canonicalSet(members.flat());
  }

  /** Both families: the chain first (its rule names the set), then the set. */
  async removeHost(): Promise<void> {
    await Promise.all(FAMILIES.map(async (family) => {
      const tools = ipt.TOOLS[family];
      const current = await runTool(tools.save, ['-t', 'nat']);
      await runTool(tools.restore, ['--noflush', '-w', '5'], { input: ipt.removeInput(current, [ipt.HOST_CHAIN]) });
      await runTool('ipset', ['destroy', ipt.PROBE[family].ipset]).catch(() => undefined);
    }));
  }
}

class NftablesBackend implements RedirectBackend {
  readonly name = 'nftables' as const;
  /** The inet table sees IPv6 too: its TCP is carried with --capture-ipv6 (the agent's IPv6 listeners), else refused. */
  readonly captureFamilies: readonly IpFamily[];
  readonly appMark = AGENT_MARK;
  private readonly preserveSource: boolean;

  /** tcp_fwmark_accept and fwmark_reflect on in a pod with source preservation (see installPod for when; routing-apply.ts replyMarksSetter). */
  private readonly setReplyMarks: ReturnType<typeof replyMarksSetter>;

  constructor(opts: NetfilterOptions) {
    this.preserveSource = opts.preserveSource;
    this.captureFamilies = captureFamiliesFor(opts.captureIpv6 ?? false);
    this.setReplyMarks = replyMarksSetter(opts.warn);
  }

  async prepare(): Promise<void> {}

  /** The families whose reply routing a pod gets (reply-routing.ts replyFamilies); the inet reply table serves both. */
  private replyFamilies(pod?: PodContext): RouteFamily[] {
    return replyFamilies(this.preserveSource, this.captureFamilies, pod?.ips ?? NO_IPS);
  }

  /**
   * Source preservation's reply routing first, then its table and the capture's in one transaction (reply table
   * first), each replaced atomically whatever was there (`fresh` changes only the order: a fresh pod's routing and
   * tables go in at once, see IptablesBackend.installPod). Without preservation only the capture's table is written:
   * the reply table is left as it is. The reply table is `inet`: its ct mark and meta mark are the same for IPv6, and
   * its `route` chain re-routes IPv6 too, so IPv6 needs only its own policy rule and local route.
   * The `route` chain (replyTable's `restore`) only where it was needed before this install: a pod whose
   * tcp_fwmark_accept and fwmark_reflect are on has had the reply mark on every app socket the agent connected to since,
   * and on every reset its kernel answered the agent with (a fresh pod gets them first: no listener of the agent, so no
   * such socket, exists yet). A pod where one was off gets the chain, as app sockets accepted meanwhile may rely on it,
   * and the sysctls after its pieces; a table that has the chain keeps it (nft.holdsRestore), as IptablesBackend keeps
   * its restore.
   */
  async installPod(netns: Netns, pod?: PodContext, opts: InstallOptions = {}): Promise<RulesSeen | undefined> {
    const families = this.replyFamilies(pod);
    if (families.length > 0 && opts.fresh) this.setReplyMarks(netns, true, families);
    const marksOn = replyMarksOn(netns, families);
    const before = readNfGeneration(netns);
    // Re-adoption after a restart: tables still at the generation where they were proved to hold what this install
    // would keep (the `route` chain or not, as below) are not listed or replaced (IptablesBackend.installPod).
    const unchanged = !opts.fresh && stillExact(opts.seen, before, (marksOn ? [false, true] : [true]).map((r) => this.digest(r)));
    const restore = !marksOn || (this.preserveSource && !opts.fresh && !unchanged && nft.holdsRestore(await this.listTable(nft.REPLY_TABLE, netns) ?? ''));
    const reply = this.preserveSource ? nft.replaceTableScript(nft.REPLY_TABLE, nft.replyTable(restore)) : '';
    const routing = applyMarkRules(netns, REPLY_RULE, families);
    const tables = async (): Promise<void> => {
      if (unchanged) return;
      if (!opts.fresh) await routing;
      await runTool('nft', ['-f', '-'], { netns: netns.toolPath, input: reply + nft.replaceTableScript(nft.POD_TABLE, nft.podTable()) });
    };
    await settleAll([routing, tables()], `installing the redirection rules in ${netns.path} failed`);
    if (families.length > 0 && !opts.fresh && !marksOn) this.setReplyMarks(netns, true, families);
    // One `nft -f` is one transaction.
    return unchanged ? opts.seen : provenSeen(before, readNfGeneration(netns), 1, this.digest(restore));
  }

  /** The digest of the tables installPod writes (the reply table with its `route` chain or without it). */
  private digest(restore: boolean): string {
    return rulesDigest(this.name, [[nft.podTable()], this.preserveSource ? [nft.replyTable(restore)] : []]);
  }

  async verifyPod(netns: Netns, pod?: PodContext): Promise<RuleDrift> {
    // The reply table with its `route` chain where installPod would put it: a sysctl off, or the chain in the table.
    const marksOn = replyMarksOn(netns, this.replyFamilies(pod));
    let restore = !marksOn;
    const before = readNfGeneration(netns);
    const [t, rt, r] = await Promise.all([
      this.verifyTable(nft.POD_TABLE, () => nft.podTable(), netns),
      this.verifyTable(nft.REPLY_TABLE, (listing) => {
        restore = restore || nft.holdsRestore(listing);
        return nft.replyTable(restore);
      }, netns),
      verifyReplyRouting(netns, this.replyFamilies(pod)),
    ]);
    // Without preservation the reply table is shown when present, never counted as drift (see above).
    const reply = this.preserveSource ? rt : ok([], [], rt.actual);
    // Both tables read exact at one generation: what the pod's record keeps (RulesSeen).
    const seen = t.ok && reply.ok ? provenSeen(before, readNfGeneration(netns), 0, this.digest(restore)) : undefined;
    const drift = ok([...t.missing, ...reply.missing, ...r.missing], [...t.unexpected, ...reply.unexpected, ...r.unexpected], [...t.actual, ...reply.actual, ...r.actual]);
    return { ...drift, expected: this.expectedLines(pod, restore), ...(seen ? { seen } : {}) };
  }

  /** The table as a fresh pod gets it where its reply-mark sysctls can be set (without the `route` chain: see installPod). */
  expectedPodRules(pod?: PodContext): string[] {
    return this.expectedLines(pod, false);
  }

  private expectedLines(pod: PodContext | undefined, restore: boolean): string[] {
    return [
      ...nft.podTable().split('\n'),
      ...(this.preserveSource ? [...nft.replyTable(restore).split('\n'), ...this.replyFamilies(pod).flatMap((f) => expectedReplyRoutingLines(f))] : []),
    ];
  }

  async installHost(): Promise<void> {
    // Keep the probe sets' elements across a repair: re-add them after replacing the table.
    const adds = (await Promise.all(FAMILIES.map(async (family) => {
      const set = nft.PROBE_SETS[family];
      const elements = await this.probeElements(set).catch(() => []);
      return elements.length ? `add element inet ${nft.HOST_TABLE} ${set} { ${elements.join(', ')} }\n` : '';
    }))).join('');
    await runTool('nft', ['-f', '-'], { input: nft.replaceTableScript(nft.HOST_TABLE, nft.hostTable()) + adds });
  }

  async verifyHost(): Promise<RuleDrift> {
    return this.verifyTable(nft.HOST_TABLE, () => nft.hostTable());
  }

  /** Into the set of the address's family. */
  async addProbeTarget(ip: string): Promise<void> {
    const { family, addr } = probeTarget(ip);
    await runTool('nft', ['add', 'element', 'inet', nft.HOST_TABLE, nft.PROBE_SETS[family], `{ ${addr} }`]);
  }

  async probeTargets(): Promise<Set<string>> {
    return canonicalSet((await Promise.all(FAMILIES.map((family) => this.probeElements(nft.PROBE_SETS[family])))).flat());
  }

  async removeProbeTarget(ip: string): Promise<void> {
    const { family, addr } = probeTarget(ip);
    const set = nft.PROBE_SETS[family];
    await runTool('nft', ['-f', '-'], { input: `add element inet ${nft.HOST_TABLE} ${set} { ${addr} }\ndelete element inet ${nft.HOST_TABLE} ${set} { ${addr} }\n` });
  }

  async removeHost(): Promise<void> {
    await runTool('nft', ['-f', '-'], { input: nft.deleteTableScript(nft.HOST_TABLE) });
  }

  private async probeElements(set: string): Promise<string[]> {
    const out = await runTool('nft', ['list', 'set', 'inet', nft.HOST_TABLE, set]);
    const m = /elements = \{([^}]*)\}/.exec(out);
    return m?.[1] ? m[1].split(',').map((s) => s.trim()).filter(Boolean) : [];
  }

  /** `nft list table inet <table>` (in `netns`, else the node's); undefined when the table is not there. */
  private async listTable(table: string, netns?: Netns): Promise<string | undefined> {
    try {
      return await runTool('nft', ['list', 'table', 'inet', table], netns ? { netns: netns.toolPath } : {});
    } catch {
      return undefined;
    }
  }

  /** The table's drift against what `expected` makes of its current listing (see verifyPod). */
  private async verifyTable(table: string, expected: (listing: string) => string, netns?: Netns): Promise<RuleDrift> {
    const listing = await this.listTable(table, netns);
    if (listing === undefined) return ok([`table inet ${table}`], [], []);
    const got = nft.normaliseListing(listing).split('\n');
    const want = nft.normaliseListing(expected(listing)).split('\n');
    if (want.join('\n') === got.join('\n')) return ok([], [], got);
    const reordered = want.every((l) => got.includes(l)) ? ['(rule order differs)'] : [];
    return ok(want.filter((l) => !got.includes(l)), got.filter((l) => !want.includes(l)).concat(reordered), got);
  }
}

/**
 * `preserveSource` (required: the caller passes --preserve-source, no path defaults it): install the in-pod pieces inbound source preservation needs. The ebpf backend needs
 * only tcp_fwmark_accept (its re-injection rule, and its egress program without it, return the app's replies to the
 * agent's transparent socket, IPv6 ones too when captured: see bpf/redirect.c). `captureIpv6`: every backend captures IPv6 TCP with it (ebpf: its programs, to the
 * agent's IPv6 listeners).
 */
export async function createBackend(mode: RedirectMode, opts: { probeSnatCgroup?: string; preserveSource: boolean; captureIpv6?: boolean; warn?: (msg: string) => void }): Promise<RedirectBackend> {
  if (mode === 'ebpf') {
    const { EbpfBackend } = await import('./ebpf.js');
    // The node-side probe SNAT stays iptables (both families, whatever captureIpv6 says).
    return new EbpfBackend(new IptablesBackend(opts.probeSnatCgroup ?? '', { preserveSource: opts.preserveSource }), { captureIpv6: opts.captureIpv6 ?? false, preserveSource: opts.preserveSource, ...(opts.warn ? { warn: opts.warn } : {}) });
  }
  if (mode === 'nftables') {
    if (opts.probeSnatCgroup) throw new Error('probeSnatCgroup needs the iptables or ebpf backend (its probe SNAT is an iptables rule)');
    return new NftablesBackend({ preserveSource: opts.preserveSource, captureIpv6: opts.captureIpv6 ?? false, ...(opts.warn ? { warn: opts.warn } : {}) });
  }
  return new IptablesBackend(opts.probeSnatCgroup ?? '', { preserveSource: opts.preserveSource, captureIpv6: opts.captureIpv6 ?? false, ...(opts.warn ? { warn: opts.warn } : {}) });
}

/**
 * Our pod chains' lines in a pod's ip6tables (nat and mangle), each prefixed `ip6tables: ` (and `mangle: `), whatever
 * the backend: for `ambient-node rules`, so an operator sees the pod's IPv6 rules (or that there are none), including
 * ones an iptables-mode agent left behind under another backend.
 */
export async function readIp6tablesOwned(netns: Netns): Promise<string[]> {
  const save = await runTool(ipt.TOOLS[6].save, [], { netns: netns.toolPath });
  const nat = ipt.ownedNatLines(ipt.tableSection(save, 'nat'), POD_CHAINS).map((l) => `${ipt.IP6_PREFIX}${l}`);
  const mangle = ipt.ownedNatLines(ipt.tableSection(save, 'mangle'), ipt.POD_MANGLE_CHAINS).map((l) => `${ipt.IP6_PREFIX}${ipt.MANGLE_PREFIX}${l}`);
  return [...nat, ...mangle];
}

/** Whether an iptables-save of one table declares any of our pod chains. */
function hasOwnChains(save: string, chains: readonly string[]): boolean {
  return chains.some((c) => save.includes(`:${c} `));
}

/**
 * Removes every in-pod artifact any backend may have installed (an older agent may have used another one), all three
 * concurrently. `ifname` is where ebpf programs would sit (default eth0). Succeeds when there is nothing to remove;
 * throws only when a removal itself fails.
 */
export async function removePodRules(netns: Netns, ifname = 'eth0'): Promise<void> {
  await removePieces(netns, ifname, ['iptables', 'nftables', 'ebpf']);
}

/**
 * Removes only what `modes` install in a pod (un-enrolment of a record that names its backend): iptables' or nftables' table(s)
 * with the reply routing both may add, or the eBPF programs and their routing. Fails as removePodRules does.
 */
export async function removeBackendPodRules(modes: readonly RedirectMode[], netns: Netns, ifname = 'eth0'): Promise<void> {
  await removePieces(netns, ifname, modes);
}

async function removePieces(netns: Netns, ifname: string, modes: readonly RedirectMode[]): Promise<void> {
  const errors: unknown[] = [];
  const removeEbpf = async (): Promise<void> => (await import('./ebpf.js')).removeEbpfPieces(netns, ifname);
  await Promise.all([
    removeNetfilter(netns, errors, { iptables: modes.includes('iptables'), nftables: modes.includes('nftables') }),
    modes.includes('ebpf') ? removeEbpf().catch((err: unknown) => errors.push(err)) : undefined,
  ]);
  if (errors.length) throw new AggregateError(errors, `removing redirection rules from ${netns.path} failed`);
}

async function removeNetfilter(netns: Netns, errors: unknown[], which: { iptables: boolean; nftables: boolean }): Promise<void> {
  if (!which.iptables && !which.nftables) return;
  for (const family of which.iptables ? FAMILIES : []) {
    for (const table of ['nat', 'mangle'] as const) {
      try {
        const tools = ipt.TOOLS[family];
        const current = await runTool(tools.save, ['-t', table], { netns: netns.toolPath });
        const chains = TABLE_CHAINS[table];
        if (ipt.ownedNatLines(current, chains).length > 0 || hasOwnChains(current, chains)) {
          await runTool(tools.restore, ['--noflush', '-w', '5'], { netns: netns.toolPath, input: ipt.removeInput(current, chains, table) });
        }
      } catch (err) {
        errors.push(err);
      }
    }
  }
  try {
    await removeReplyRouting(netns);
  } catch (err) {
    errors.push(err);
  }
  if (!which.nftables) return;
  try {
    await runTool('nft', ['-f', '-'], { netns: netns.toolPath, input: nft.deleteTableScript(nft.POD_TABLE) + nft.deleteTableScript(nft.REPLY_TABLE) });
  } catch (err) {
    errors.push(err);
  }
}
