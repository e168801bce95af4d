// 10. IPv6 vs IPv4 (issue 14): on a dual-stack testbed whose agents capture IPv6, one mesh client calls one enrolled
// server by its IPv4 and by its IPv6 address in interleaved blocks, and a plain client a plain server the same way (the
// kernel's own IPv6/IPv4 difference); the mesh's IPv6/IPv4 ratio of each figure, block by block, is what counts.
import { formatHostPort } from '../../agent/src/protocol/address.js';
import type { RedirectMode, Testbed, TestbedPod } from '../../test/testbed/index.js';
import { onCpu, pinAgent } from './cpu.js';
import { IPERF_PORT, meshAndPlainPods, pooled, RR, RR_PORT, runBulkInterleaved, runRr, runRrInterleaved, SINK_PORT, type DatapathOpts, type Route, type RrResult, type RrSamples } from './datapath.js';
import { checkInterrupted, progress, withTestbeds } from './run.js';
import { peerSeen } from './source.js';
import { burstThroughput, dist, f1, f2, medianCi, pairedRatios, ratio, ratioCi, ratioVerdict, verdictLine, type MedianCi } from './stats.js';

export interface Ipv6Opts extends Pick<DatapathOpts, 'rounds' | 'conns' | 'pin'> {
  /** Backends measured, one dual-stack testbed each (iptables, nftables, ebpf). */
  ipv6Modes: RedirectMode[];
  /** Interleaved blocks per family. */
  ipv6Blocks: number;
  /** One bulk burst, MiB one way; each block sends BULK_BURSTS of them per family, the families in turn. */
  ipv6Mib: number;
}

export type Family = 'ipv4' | 'ipv6';
const FAMILIES: readonly Family[] = ['ipv4', 'ipv6'];
const LABEL: Record<Family, string> = { ipv4: 'IPv4', ipv6: 'IPv6' };
const HBONE_PORT = 15008;
/** Timed bulk bursts per family and block (after 2 untimed ones). */
const BULK_BURSTS = 12;

export interface Ipv6Result {
  mode: RedirectMode;
  /** The server pod's address per family (what the client dialled), and the client pod's. */
  server: Record<Family, string>;
  client: Record<Family, string>;
  /** Pooled over the blocks, with each block's p50. */
  rr: Record<Family, RrResult>;
  /** One bulk transfer per block. */
  /** Bulk Gbit/s per block: its bursts' bits over their time (burstThroughput). */
  bulk: Record<Family, number[]>;
  /** Connections the client's agent logged as HBONE to the server's address:15008, per family (proof both were captured). */
  tunnelled: Record<Family, number>;
  /** What the server's app saw as its peer per family (whether source preservation applied to both alike). */
  peerSeen: Record<Family, string>;
  /** The same blocks between a plain client and a plain server on the same nodes (no agent in the path). */
  direct: { rr: Record<Family, RrResult>; bulk: Record<Family, number[]> };
}

/** Goal from the issue: IPv6 and IPv4 no more than this far apart. */
export const IPV6_RATIO_LIMIT = 0.05;

/** Outbound access-log lines of the client's agent whose tunnel went to `addr`:15008. */
async function tunnelledTo(tb: Testbed, addr: string): Promise<number> {
  const want = formatHostPort(addr, HBONE_PORT);
  const logs = await tb.agent(0).logs({ currentRun: true });
  return logs.filter((l) => l.scope === 'access' && l.direction === 'outbound' && l['dst.addr'] === want).length;
}

function dualStack(pod: TestbedPod): Record<Family, string> {
  if (pod.ip4 === undefined || pod.ip6 === undefined) throw new Error(`${pod.key} is not dual-stack: ${pod.ips.join(', ')}`);
  return { ipv4: pod.ip4, ipv6: pod.ip6 };
}

async function benchMode(o: Ipv6Opts, mode: RedirectMode): Promise<Ipv6Result> {
  progress(`ipv6 [${mode}]: dual-stack 2-node testbed, agents capturing IPv6`);
  const tbOpts = { nodes: 2, ipFamilies: ['ipv4', 'ipv6'] as ('ipv4' | 'ipv6')[], redirectMode: mode, agentLogLevel: 'info', agentArgs: ['--capture-ipv6', 'true'] };
  return withTestbeds([tbOpts], async ([tb]) => {
    if (tb === undefined) throw new Error('no testbed');
    const { meshClient: client, meshServer: server, plainClient, plainServer } = await meshAndPlainPods(tb);
    const serverAddr = dualStack(server);
    const plainAddr = dualStack(plainServer);
    if (o.pin) for (const n of [0, 1]) pinAgent(tb.agent(n), n);
    for (const s of [server, plainServer]) {
      void s.spawn(...onCpu(o, s, process.execPath, [RR, 'server', '--port', String(RR_PORT), '--listen', '::', '--sink-port', String(SINK_PORT), '--chunk-mib', String(o.ipv6Mib)]), { reject: false });
      await s.waitForPort(RR_PORT);
      await s.waitForPort(SINK_PORT);
    }
    const routes = {} as Record<Family, Route>;
    const direct = {} as Record<Family, Route>;
    const result: Ipv6Result = {
      mode, server: serverAddr, client: dualStack(client), rr: {} as Ipv6Result['rr'], bulk: { ipv4: [], ipv6: [] }, tunnelled: { ipv4: 0, ipv6: 0 }, peerSeen: { ipv4: '', ipv6: '' },
      direct: { rr: {} as Ipv6Result['rr'], bulk: { ipv4: [], ipv6: [] } },
    };
    for (const f of FAMILIES) {
      routes[f] = { client, server, host: serverAddr[f], rrPort: RR_PORT, iperfPort: IPERF_PORT };
      direct[f] = { client: plainClient, server: plainServer, host: plainAddr[f], rrPort: RR_PORT, iperfPort: IPERF_PORT };
      result.peerSeen[f] = await peerSeen(routes[f]);
      await runRr(o, routes[f], { rounds: 100, conns: 5 }); // untimed warm-up: a pooled HBONE connection per family
      await runRr(o, direct[f], { rounds: 100, conns: 5 });
    }
    // The warm-up's and peerSeen's tunnels are counted apart: the timed blocks' own must have gone through HBONE.
    const before = { ipv4: await tunnelledTo(tb, serverAddr.ipv4), ipv6: await tunnelledTo(tb, serverAddr.ipv6) };
    const blocks: Record<Family, RrSamples[]> = { ipv4: [], ipv6: [] };
    const directBlocks: Record<Family, RrSamples[]> = { ipv4: [], ipv6: [] };
    progress(`  [${mode}] ${o.ipv6Blocks} blocks of ${o.rounds} round trips + ${o.conns} new connections + ${BULK_BURSTS} x ${o.ipv6Mib} MiB per family, mesh and direct`);
    for (let b = 0; b < o.ipv6Blocks; b++) {
      checkInterrupted();
      // Both families in one run, one round trip, connection or bulk burst at a time each: their drift cancels.
      for (const [route, into] of [[routes, blocks], [direct, directBlocks]] as const) {
        const [s4, s6] = await runRrInterleaved(o, route.ipv4, [route.ipv4.host, route.ipv6.host]);
        if (s4 === undefined || s6 === undefined) throw new Error('rr.mjs gave no samples');
        into.ipv4.push(s4);
        into.ipv6.push(s6);
      }
      for (const [route, into] of [[routes, result.bulk], [direct, result.direct.bulk]] as const) {
        const [g4, g6] = await runBulkInterleaved(o, route.ipv4, [route.ipv4.host, route.ipv6.host], BULK_BURSTS, o.ipv6Mib);
        if (g4 === undefined || g6 === undefined) throw new Error('rr.mjs bulk gave no samples');
        into.ipv4.push(burstThroughput(g4));
        into.ipv6.push(burstThroughput(g6));
      }
    }
    for (const f of FAMILIES) {
      result.rr[f] = pooled(blocks[f]);
      result.direct.rr[f] = pooled(directBlocks[f]);
      // Every timed new connection (blocks x conns; the persistent one and iperf3's come on top), once the log has them.
      const want = o.ipv6Blocks * o.conns;
      for (let i = 0; i < 20 && (await tunnelledTo(tb, serverAddr[f])) - before[f] < want; i++) await new Promise((r) => setTimeout(r, 100));
      result.tunnelled[f] = (await tunnelledTo(tb, serverAddr[f])) - before[f];
      if (result.tunnelled[f] < want) throw new Error(`only ${result.tunnelled[f]} of the ${want} timed ${LABEL[f]} connections went through HBONE to ${formatHostPort(serverAddr[f], HBONE_PORT)}: the comparison would be meaningless`);
    }
    return result;
  });
}

export async function benchIpv6(o: Ipv6Opts): Promise<Ipv6Result[]> {
  const out: Ipv6Result[] = [];
  for (const mode of o.ipv6Modes) out.push(await benchMode(o, mode));
  return out;
}

/** One row of the table: a figure per family, and each block's value of it when there is one. */
interface Figure {
  name: string;
  /** The name in the verdict line. */
  short: string;
  digits: 1 | 2;
  value: Record<Family, number>;
  blocks?: Record<Family, number[]>;
  /** Part of the issue's target (the p50s and the throughput; the p99s are shown, not judged). */
  judged: boolean;
}

/** The table's rows for the mesh path, or with `direct` for the plain pods' path. */
function figures(r: Ipv6Result, direct = false): Figure[] {
  const src = direct ? r.direct : r;
  const gbps = (f: Family): number[] => src.bulk[f];
  const per = <T>(fn: (f: Family) => T): Record<Family, T> => ({ ipv4: fn('ipv4'), ipv6: fn('ipv6') });
  return [
    { name: 'bulk Gbit/s (median of blocks)', short: 'throughput', digits: 2, value: per((f) => dist(gbps(f)).p50), blocks: per(gbps), judged: true },
    { name: '1 KiB RR p50 µs', short: 'RR p50', digits: 1, value: per((f) => src.rr[f].persistent.p50), blocks: per((f) => src.rr[f].blockP50.persistent), judged: true },
    { name: '1 KiB RR p99 µs', short: 'RR p99', digits: 1, value: per((f) => src.rr[f].persistent.p99), judged: false },
    { name: 'new connection p50 µs', short: 'new connection p50', digits: 1, value: per((f) => src.rr[f].newConnection.p50), blocks: per((f) => src.rr[f].blockP50.newConnection), judged: true },
    { name: 'new connection p99 µs', short: 'new connection p99', digits: 1, value: per((f) => src.rr[f].newConnection.p99), judged: false },
  ];
}

/** The mesh's own IPv6/IPv4 ratio block by block: its ratio over the direct path's in the same block pair. */
function meshShare(mesh: Figure, direct: Figure): MedianCi | undefined {
  if (!mesh.blocks || !direct.blocks) return undefined;
  return medianCi(pairedRatios(pairedRatios(direct.blocks.ipv4, direct.blocks.ipv6), pairedRatios(mesh.blocks.ipv4, mesh.blocks.ipv6)));
}

/**
 * IPv6 over IPv4 block by block, with the 95 % interval of their median: latency blocks hold both families interleaved
 * one round trip or connection at a time; each IPv6 bulk transfer ran right after or before its IPv4 one.
 */
function pairedCi(x: Figure): MedianCi | undefined {
  return x.blocks === undefined ? undefined : medianCi(pairedRatios(x.blocks.ipv4, x.blocks.ipv6));
}

/** What the server's app saw as its peer on one family, and what that means. */
function peer(r: Ipv6Result, f: Family): string {
  const seen = r.peerSeen[f];
  if (seen === r.client[f]) return `${seen} (the client: source preserved)`;
  if (seen === r.server[f]) return `${seen} (itself: source not preserved)`;
  return seen === '' ? 'nothing' : seen;
}

export function reportIpv6(o: Ipv6Opts, results: Ipv6Result[], lines: string[]): void {
  for (const r of results) {
    lines.push(`### IPv6 vs IPv4 [${r.mode}] (same run, ${o.ipv6Blocks} blocks of ${o.rounds} 1 KiB round trips, ${o.conns} new connections and ${BULK_BURSTS} bulk bursts of ${o.ipv6Mib} MiB one way per family, all interleaved one by one)`);
    lines.push('');
    lines.push(
      `Dual-stack testbed, agents capturing IPv6: an enrolled client on node 0 calls the same enrolled server on node 1 by ${r.server.ipv4} and by ${r.server.ipv6}, both through HBONE (the client's agent logged ${r.tunnelled.ipv4} and ${r.tunnelled.ipv6} tunnelled connections in the timed blocks). New connection = connect + first 1 KiB round trip. The server's app saw as its peer ${FAMILIES.map((f) => `${peer(r, f)} over ${LABEL[f]}`).join(' and ')}.`,
    );
    lines.push('');
    lines.push('| figure | IPv4 | IPv6 | IPv6/IPv4 | per-block IPv4 | per-block IPv6 | IPv6/IPv4 block by block: median [95 % interval] | against ±5 % |');
    lines.push('|---|---:|---:|---:|---|---|---:|---|');
    const figs = figures(r);
    for (const x of figs) {
      const ci = pairedCi(x);
      const b = x.blocks;
      const f = x.digits === 2 ? f2 : f1;
      lines.push(
        `| ${x.name} | ${f(x.value.ipv4)} | ${f(x.value.ipv6)} | ${ratio(x.value.ipv6, x.value.ipv4)} | ${b ? b.ipv4.map(f).join(' ') : '–'} | ${b ? b.ipv6.map(f).join(' ') : '–'} | ${ci ? ratioCi(ci) : '–'} | ${ci && x.judged ? ratioVerdict(ci, IPV6_RATIO_LIMIT) : '–'} |`,
      );
    }
    lines.push('');
    lines.push(verdictLine(`IPv6 and IPv4 no more than ${IPV6_RATIO_LIMIT * 100} % apart (throughput, RR p50, new connection p50)`,
      figs.filter((x) => x.judged).map((x) => ({ name: x.short, ci: pairedCi(x) })), IPV6_RATIO_LIMIT, '--ipv6-blocks'));
    lines.push('');
    const direct = figures(r, true).filter((x) => x.judged);
    lines.push(`Direct TCP between two plain pods on the same nodes, in the same blocks (the kernel's own difference), IPv6/IPv4 block by block: ${direct.map((x) => `${x.short} ${(x.blocks && ratioCi(medianCi(pairedRatios(x.blocks.ipv4, x.blocks.ipv6)))) ?? 'n/a'}`).join(', ')}. The mesh's own share (its ratio over the direct one, block by block): ${figs.filter((x) => x.judged).map((x, i) => {
      const d = direct[i];
      const ci = d && meshShare(x, d);
      return `${x.short} ${ci ? ratioCi(ci) : 'n/a'}`;
    }).join(', ')}.`);
    lines.push('');
  }
}
