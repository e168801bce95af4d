// The ebpf redirection backend: tc clsact programs on the pod's interface plus a policy-routing rule, a local route,
// accept_local (the rule and route per captured family) and, with source preservation, tcp_fwmark_accept, all inside
// the pod netns (nothing attached in the node's).
// Node-side probe SNAT is delegated to iptables.
import { existsSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RedirectMode } from '../config.js';
import { AmbientError, settleAll } from '../errors.js';
import { runTool } from '../platform/exec.js';
import {
  BPF_FUNC, BPF_PROG_TYPE_SCHED_CLS, BPF_TC_EGRESS, BPF_TC_INGRESS, BpfObject, LibbpfError, LibbpfMissingError, ensureLibbpf,
  mapFdById, mapInfoByFd, mapLookup, mapUpdate, numPossibleCpus, probeHelper, probeProgType, progInfoByFd, progInfoById, tcAttach,
  tcDetach, tcHookCreate, tcQuery, type TcSlot,
} from '../platform/libbpf.js';
import { close, ifNameToIndex } from '../platform/libc.js';
import { Netns, sameNetns, withNetns, writeNetSysctl, type NetnsId } from '../platform/netns.js';
import type { IpFamily } from '../protocol/address.js';
import { applyMarkRules, replyMarksSetter } from './routing-apply.js';
import { captureFamiliesFor, type InstallOptions, type RedirectBackend, type RuleDrift } from './types.js';
import {
  CFG_MAP, CFG_SIZE, OBJECT_FILE, PROG_IN, PROG_OUT, TC_HANDLE, TC_PRIORITY, checkIfname, decodeConfig,
  diffLines, encodeConfig, expectedLines, mapLine, OUTBOUND_MARK, podAddresses, progLine, acceptLocalPath, REINJECT_RULE, routingFamilies,
  routingLines, routingReadScript, routingRemoveScript, STAT_NAMES, STATS_MAP, statsLine, sumPerCpu, type PodAddresses, type PodConfig,
  type ReadCounters, type PodContext, type ProgTags,
} from './ebpf-config.js';

export class EbpfUnavailableError extends AmbientError<'AMB_ERR_EBPF_UNAVAILABLE'> {
  constructor(missing: string[], options?: { cause?: unknown }) {
    super('AMB_ERR_EBPF_UNAVAILABLE', `--redirect-mode ebpf cannot run here: ${missing.join('; ')}`, options);
  }
}

/** dist/bpf/redirect.o: beside the built agent (dist/agent/src/redirect -> dist/bpf), or dist/bpf from the source tree. */
export function defaultObjectPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [
    process.env.AMBIENT_BPF_DIR ? join(process.env.AMBIENT_BPF_DIR, OBJECT_FILE) : '',
    join(here, '../../../bpf', OBJECT_FILE),
    join(here, '../../../dist/bpf', OBJECT_FILE),
    join(dirname(process.execPath), 'bpf', OBJECT_FILE),
  ].filter(Boolean);
  return candidates.find((p) => existsSync(p)) ?? candidates[1] ?? OBJECT_FILE;
}

const HELPERS: { id: number; name: string; since: string }[] = [
  { id: BPF_FUNC.skb_store_bytes, name: 'bpf_skb_store_bytes', since: '4.1' },
  { id: BPF_FUNC.redirect, name: 'bpf_redirect', since: '4.4' },
  { id: BPF_FUNC.csum_diff, name: 'bpf_csum_diff', since: '4.6' },
  { id: BPF_FUNC.skb_change_type, name: 'bpf_skb_change_type', since: '4.8' },
  { id: BPF_FUNC.skb_change_tail, name: 'bpf_skb_change_tail', since: '4.9' },
  { id: BPF_FUNC.sk_release, name: 'bpf_sk_release', since: '4.20' },
  { id: BPF_FUNC.sk_fullsock, name: 'bpf_sk_fullsock', since: '5.1' },
  { id: BPF_FUNC.skc_lookup_tcp, name: 'bpf_skc_lookup_tcp', since: '5.2' },
  { id: BPF_FUNC.sk_storage_get, name: 'bpf_sk_storage_get', since: '5.2' },
  { id: BPF_FUNC.sk_assign, name: 'bpf_sk_assign', since: '5.7' },
];

/**
 * Start-up feature probe: libbpf, tc BPF programs, every helper the programs call, the object file, and a real load
 * through the verifier. Returns the programs' tags (what a correctly attached program must carry). Throws naming what is missing.
 */
export function probeKernel(objectPath: string): ProgTags {
  try {
    ensureLibbpf();
  } catch (err) {
    throw new EbpfUnavailableError(['libbpf.so.1 is not installed (Debian package libbpf1)'], { cause: err });
  }
  const missing: string[] = [];
  if (!probeProgType(BPF_PROG_TYPE_SCHED_CLS)) {
    missing.push('the kernel cannot load tc (BPF_PROG_TYPE_SCHED_CLS) programs: needs CONFIG_BPF_SYSCALL and CONFIG_NET_CLS_BPF, and root');
  } else {
    for (const h of HELPERS) if (!probeHelper(BPF_PROG_TYPE_SCHED_CLS, h.id)) missing.push(`the kernel lacks the helper ${h.name} for tc programs (Linux ${h.since}+)`);
  }
  if (!existsSync(objectPath)) missing.push(`${objectPath} is missing: build it with scripts/build.sh (needs clang)`);
  if (missing.length) throw new EbpfUnavailableError(missing);
  let obj: BpfObject | undefined;
  try {
    obj = BpfObject.load(objectPath, [PROG_IN, PROG_OUT]);
    return { in: progInfoByFd(obj.progFd(PROG_IN)).tag, out: progInfoByFd(obj.progFd(PROG_OUT)).tag };
  } catch (err) {
    throw new EbpfUnavailableError([`loading ${objectPath} failed: ${(err as Error).message}`], { cause: err });
  } finally {
    obj?.close();
  }
}

/** The node-side pieces (probe SNAT), which the ebpf backend leaves to another backend. */
export type HostRules = Pick<RedirectBackend, 'installHost' | 'verifyHost' | 'addProbeTarget' | 'removeProbeTarget' | 'probeTargets' | 'removeHost'>;

interface Found {
  progs: { direction: 'ingress' | 'egress'; id: number; name: string; tag: string }[];
  map?: { id: number; cfg: PodConfig };
  stats?: { id: number; counters: ReadCounters };
  ifindex: number;
}

const ENOENT = osConstants.errno.ENOENT;

/** The counters the map holds; one of an older build is shorter (ENOENT past its end): its missing counters are absent. */
function readCounters(fd: number): ReadCounters {
  const cpus = numPossibleCpus();
  const key = Buffer.alloc(4);
  const counters: ReadCounters = {};
  for (const [i, name] of STAT_NAMES.entries()) {
    key.writeUInt32LE(i);
    try {
      counters[name] = sumPerCpu(mapLookup(fd, key, 8 * cpus));
    } catch (err) {
      if (err instanceof LibbpfError && err.errno === ENOENT) break;
      throw err;
    }
  }
  return counters;
}

const slot = (ifindex: number, direction: number): TcSlot => ({ ifindex, direction, handle: TC_HANDLE, priority: TC_PRIORITY });

/** Reads what is attached at our tc slots on ifname, and the config map behind it. Runs inside the pod netns. */
function readAttached(ns: Netns, ifname: string): Found {
  return withNetns(ns, () => {
    const ifindex = ifNameToIndex(ifname);
    const found: Found = { progs: [], ifindex };
    if (!ifindex) return found;
    for (const [direction, point] of [['ingress', BPF_TC_INGRESS], ['egress', BPF_TC_EGRESS]] as const) {
      const id = tcQuery(slot(ifindex, point));
      if (id === undefined) continue;
      const info = progInfoById(id);
      found.progs.push({ direction, id, name: info.name, tag: info.tag });
      if (found.map && found.stats) continue;
      for (const mapId of info.mapIds) {
        const fd = mapFdById(mapId);
        try {
          const m = mapInfoByFd(fd);
          if (m.name === CFG_MAP && m.valueSize === CFG_SIZE) found.map = { id: mapId, cfg: decodeConfig(mapLookup(fd, Buffer.alloc(4), CFG_SIZE)) };
          if (m.name === STATS_MAP && m.valueSize === 8) found.stats = { id: mapId, counters: readCounters(fd) };
        } finally {
          close(fd);
        }
      }
    }
    return found;
  });
}

function foundLines(ifname: string, f: Found): string[] {
  return [
    ...f.progs.map((p) => progLine(ifname, p.direction, p.name, p.tag, p.id)),
    ...(f.map ? [mapLine(f.map.cfg, f.map.id)] : []),
    ...(f.stats ? [statsLine(f.stats.id, f.stats.counters)] : []),
  ];
}

/** Turns accept_local on for the pod interface (re-injected outbound packets carry the pod's own source). */
function acceptLocal(ns: Netns, ifname: string): void {
  writeNetSysctl(ns, acceptLocalPath(ifname), '1');
}

/** Loads the object, writes the pod's config and attaches both programs (ingress first), replacing ours atomically. */
function attach(ns: Netns, objectPath: string, ifname: string, addrs: PodAddresses): void {
  const obj = BpfObject.load(objectPath, [PROG_IN, PROG_OUT]);
  try {
    withNetns(ns, () => {
      const ifindex = ifNameToIndex(ifname);
      if (!ifindex) throw new Error(`interface ${ifname} not found in the pod's network namespace`);
      const cfg = { ifindex, podIp4: addrs.ip4 ?? '0.0.0.0', flags: 0, ...(addrs.ip6 ? { podIp6: addrs.ip6 } : {}) };
      mapUpdate(obj.mapFd(CFG_MAP), Buffer.alloc(4), encodeConfig(cfg));
      tcHookCreate(ifindex);
      // Ingress first: an outbound SYN re-injected by a new egress program needs the ingress program to be there.
      tcAttach(slot(ifindex, BPF_TC_INGRESS), obj.progFd(PROG_IN));
      tcAttach(slot(ifindex, BPF_TC_EGRESS), obj.progFd(PROG_OUT));
    });
  } finally {
    obj.close(); // the tc filters keep the programs (and through them the map) alive; nothing is pinned
  }
}

/** Detaches our programs from ifname (egress first, so nothing is re-injected to a missing ingress program). */
function detach(ns: Netns, ifname: string): boolean {
  return withNetns(ns, () => {
    const ifindex = ifNameToIndex(ifname);
    if (!ifindex) return false;
    let had = false;
    for (const point of [BPF_TC_EGRESS, BPF_TC_INGRESS]) {
      const s = slot(ifindex, point);
      const id = tcQuery(s);
      if (id === undefined) continue;
      if (!progInfoById(id).name.startsWith('ambient_')) continue; // someone else's filter at our slot: not ours to remove
      tcDetach(s);
      had = true;
    }
    return had;
  });
}

function withOpenNetns<T>(path: string, fn: (ns: Netns) => T): T {
  const ns = Netns.open(path);
  try {
    return fn(ns);
  } finally {
    ns.close();
  }
}

export class EbpfBackend implements RedirectBackend {
  readonly name: RedirectMode = 'ebpf';
  /**
   * The programs steer the pod's IPv4 address, and its IPv6 one with --capture-ipv6 (podAddresses); uncaptured IPv6 TCP
   * is answered with a RST or dropped.
   */
  readonly captureFamilies: readonly IpFamily[];
  /**
   * The re-injection mark, not the agent's: with tcp_fwmark_accept the app's end of a connection from the agent takes it,
   * so the re-injection rule routes it through lo from the SYN-ACK on (lo's MSS, not eth0's; its replies never reach
   * eth0), and should that rule be gone, ambient_out re-injects what carries it (never passes it as the agent's).
   */
  readonly appMark = OUTBOUND_MARK;
  private readonly captureIpv6: boolean;
  private readonly preserveSource: boolean;
  private tags: ProgTags | undefined;
  private readonly setReplyMarks: ReturnType<typeof replyMarksSetter>;
  /** During a take-over (beginTakeOver): the pods installed meanwhile, by path, with tcp_fwmark_accept held off. */
  private heldFwmark: Map<string, NetnsId> | undefined;

  constructor(private readonly host: HostRules, opts: { captureIpv6: boolean; preserveSource: boolean; warn?: (msg: string) => void }, readonly objectPath = defaultObjectPath()) {
    this.captureIpv6 = opts.captureIpv6;
    this.preserveSource = opts.preserveSource;
    this.setReplyMarks = replyMarksSetter(opts.warn);
    this.captureFamilies = captureFamiliesFor(opts.captureIpv6);
  }

  async prepare(): Promise<void> {
    this.tags = probeKernel(this.objectPath);
  }

  /**
   * Routing first: once the programs are attached, re-injected SYNs need the rule, the route and accept_local. A fresh
   * pod has no listener of the agent yet (its SYNs find none and are dropped), so its programs are loaded whatever the
   * routing's outcome (settleAll reports both). Not fresh (re-adoption, repair, an ADD into a namespace a DEL left programs in): programs that
   * are attached as expected are kept (no reload, no window), others replaced atomically.
   */
  async installPod(ns: Netns, pod: PodContext, opts: InstallOptions = {}): Promise<undefined> {
    const ifname = checkIfname(pod.ifname);
    const addrs = podAddresses(pod, this.captureIpv6);
    const failed = `installing the eBPF redirection in ${ns.path} failed`;
    // Routing before the programs when they may already be attached (re-injected SYNs need the rule, the route and
    // accept_local); a fresh pod has no agent listener yet, so both go at once.
    const routing = applyMarkRules(ns, REINJECT_RULE, routingFamilies(addrs));
    const programs = async (): Promise<void> => {
      if (!opts.fresh) await routing;
      acceptLocal(ns, ifname);
      // With source preservation the app's socket takes the agent's SYN mark (appMark); without it, or while a
      // predecessor may still dial with the agent mark, off.
      this.heldFwmark?.set(ns.path, ns.id);
      this.setReplyMarks(ns, this.preserveSource && !this.heldFwmark);
      if (!opts.fresh) {
        // Re-adoption and repair: keep correctly attached programs as they are (no reload, no window).
        const d = diffLines(expectedLines(pod, this.tags, this.captureIpv6).slice(0, 4), foundLines(ifname, readAttached(ns, ifname)));
        if (d.missing.length === 0 && d.unexpected.length === 0) return;
      }
      attach(ns, this.objectPath, ifname, addrs);
    };
    await settleAll([routing, programs()], failed);
    return undefined; // no nf_tables generation covers programs and maps
  }

  beginTakeOver(): void {
    this.heldFwmark = new Map();
  }

  /** The predecessor is gone: tcp_fwmark_accept on in the pods installed meanwhile (still the same namespace at their path). */
  endTakeOver(): void {
    const held = this.heldFwmark;
    this.heldFwmark = undefined;
    if (!held || !this.preserveSource) return;
    for (const [path, id] of held) {
      try {
        withOpenNetns(path, (ns) => {
          if (sameNetns(ns.id, id)) this.setReplyMarks(ns, true);
        });
      } catch {
        // The pod is gone (its namespace with it): nothing to turn on.
      }
    }
  }

  async verifyPod(ns: Netns, pod: PodContext): Promise<RuleDrift> {
    const ifname = checkIfname(pod.ifname);
    const [found, routing] = await Promise.all([
      Promise.resolve().then(() => readAttached(ns, ifname)),
      runTool('sh', ['-c', routingReadScript(ifname, podAddresses(pod, this.captureIpv6).ip6 !== undefined)], { netns: ns.toolPath }),
    ]);
    const actual = [...foundLines(ifname, found), ...routingLines(routing, ifname)];
    const d = diffLines(this.expectedPodRules(pod), actual);
    return { ok: d.missing.length === 0 && d.unexpected.length === 0, ...d, actual };
  }

  expectedPodRules(pod?: PodContext): string[] {
    if (pod) return expectedLines(pod, this.tags, this.captureIpv6);
    // Without a pod: the shape, with placeholders where the interface and the address go.
    return expectedLines({ ifname: 'eth0', ips: ['0.0.0.0'] }, this.tags).map((l) => l.replace(/\beth0\b/g, '<ifname>').replace(' pod 0.0.0.0', ' pod <pod-ip>'));
  }

  installHost(): Promise<void> {
    return this.host.installHost();
  }

  verifyHost(): Promise<RuleDrift> {
    return this.host.verifyHost();
  }

  addProbeTarget(ip: string, podUid: string): Promise<void> {
    return this.host.addProbeTarget(ip, podUid);
  }

  removeProbeTarget(ip: string): Promise<void> {
    return this.host.removeProbeTarget(ip);
  }

  probeTargets(): Promise<Set<string>> {
    return this.host.probeTargets();
  }

  removeHost(): Promise<void> {
    return this.host.removeHost();
  }
}

/** The verdict counters of the programs attached to a pod's interface (undefined when none are attached); for diagnostics and tests. */
export function podCounters(netnsPath: string, ifname: string): ReadCounters | undefined {
  return withOpenNetns(netnsPath, (ns) => readAttached(ns, checkIfname(ifname))).stats?.counters;
}

/** Removes the ebpf pieces from a pod (whatever mode the agent runs in now); harmless when there are none. */
export async function removeEbpfPieces(ns: Netns, ifname: string): Promise<void> {
  const i = checkIfname(ifname);
  try {
    detach(ns, i);
  } catch (err) {
    if (!(err instanceof LibbpfMissingError)) throw err; // without libbpf nothing of ours can have been attached
  }
  await runTool('sh', ['-c', routingRemoveScript(i)], { netns: ns.toolPath });
}

