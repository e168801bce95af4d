// The markdown tables of the report: ADD latency against the bridge-only baseline and the data path (mesh against direct and
// a stunnel pair), each with its target verdicts. Appends lines to the caller's report; measures and writes nothing itself.
import os from 'node:os';
import type { RedirectMode } from '../../test/testbed/index.js';
import { type AddOpts, addStats, type ChainResult, NODE_BARE } from './add-latency.js';
import { type DatapathOpts, type DatapathResult, type IperfResult, PATH_NAMES, type PathName } from './datapath.js';
import { dist, f0, f1, f2, pm, ratio, signed } from './stats.js';

/** The ADD latency budget: what ambient-cni + enrolment may add to the chain's ADD, at p99. */
export const BUDGET_MS = 100;

export interface BudgetVerdict {
  chain: string;
  mode: RedirectMode;
  addedP99Ms: number;
  ambientCniP99Ms: number;
  met: boolean;
}

export function reportAdd(o: AddOpts, chains: ChainResult[], lines: string[]): BudgetVerdict[] {
  const base = chains.find((c) => c.key === 'bridge');
  if (base === undefined) return [];
  const baseSeq = addStats(base.sequential);
  const verdicts: BudgetVerdict[] = [];

  lines.push(`### CNI ADD latency: ${o.pods} pods added one after another, 1 node (chains interleaved pod by pod; ${o.warmup} warm-up ADDs each not counted)`);
  lines.push('');
  lines.push('| chain | ADD p50 ms | ADD p99 ms | added p50 ms | added p99 ms | p50 ratio | ambient-cni exec p50 / p99 ms |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|');
  for (const c of chains) {
    const s = addStats(c.sequential);
    const isBase = c === base;
    lines.push(
      `| ${c.label} | ${f1(s.chain.p50)} | ${f1(s.chain.p99)} | ${isBase ? '-' : signed(s.chain.p50 - baseSeq.chain.p50, 1)} | ${isBase ? '-' : signed(s.chain.p99 - baseSeq.chain.p99, 1)} | ${isBase ? '1.00x' : ratio(s.chain.p50, baseSeq.chain.p50)} | ${isBase ? '-' : pm(s.ambient)} |`,
    );
    if (!isBase && c.mode !== undefined) {
      const added = s.chain.p99 - baseSeq.chain.p99;
      verdicts.push({ chain: c.key, mode: c.mode, addedP99Ms: added, ambientCniP99Ms: s.ambient.p99, met: added <= BUDGET_MS && s.ambient.p99 <= BUDGET_MS });
    }
  }
  lines.push('');
  lines.push(
    `Budget, ADD added by ambient-cni + enrolment p99 <= ${BUDGET_MS} ms (node-plugin-* and standalone-* are references for the front's fallback, not what nodes run per ADD; judged on both the chain p99 difference and the ambient-cni exec p99): ` +
      verdicts
        .map((v) => `**${v.chain}: ${v.met ? 'MET' : 'MISSED'}** (chain ${signed(v.addedP99Ms, 1)} ms, ambient-cni exec ${f1(v.ambientCniP99Ms)} ms)`)
        .join('; '),
  );
  lines.push('');

  lines.push('Where the ambient-cni time goes (p50 / p99 ms; sequential ADDs, then 10 empty execs of each, all started in the node\'s namespace as the testbed\'s runtime starts plugins):');
  lines.push('');
  lines.push('| chain | ambient-cni exec | of which agent round trip | of which enrolment in the agent | exec minus round trip (process start-up, config, exit) | empty exec (VERSION) of ambient-cni | bare \`node -e 0\` | empty exec (VERSION) of bridge |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const c of chains) {
    if (c === base) continue;
    const s = addStats(c.sequential);
    const rest = dist(c.sequential.flatMap((x) => (x.ambientMs !== undefined && x.agentRoundTripMs !== undefined ? [x.ambientMs - x.agentRoundTripMs] : [])));
    lines.push(
      `| ${c.label} | ${pm(s.ambient)} | ${pm(s.agentRoundTrip)} | ${pm(s.enrol)} | ${pm(rest)} | ${pm(dist(c.versionMs['ambient-cni'] ?? []))} | ${pm(dist(c.versionMs[NODE_BARE] ?? []))} | ${pm(dist(c.versionMs.bridge ?? []))} |`,
    );
  }
  lines.push('');

  if (chains.some((c) => c.concurrent.length > 0)) {
    const baseCon = addStats(base.concurrent);
    lines.push(`### CNI ADD latency: ${o.pods} pods, ${o.concurrency} ADDs at a time (${os.availableParallelism()} cores), 1 node`);
    lines.push('');
    lines.push('| chain | ADD p50 ms | ADD p99 ms | added p50 ms | added p99 ms | ambient-cni exec p50 / p99 ms | pods/s |');
    lines.push('|---|---:|---:|---:|---:|---:|---:|');
    for (const c of chains) {
      const s = addStats(c.concurrent);
      const isBase = c === base;
      const rate = c.concurrentWallMs === undefined ? Number.NaN : (c.concurrent.length * 1000) / c.concurrentWallMs;
      lines.push(
        `| ${c.label} | ${f1(s.chain.p50)} | ${f1(s.chain.p99)} | ${isBase ? '-' : signed(s.chain.p50 - baseCon.chain.p50, 1)} | ${isBase ? '-' : signed(s.chain.p99 - baseCon.chain.p99, 1)} | ${isBase ? '-' : pm(s.ambient)} | ${f1(rate)} |`,
      );
    }
    lines.push('');
  }
  return verdicts;
}

/** Targets of the secure overlay (issue 3, section 6): mesh throughput against the stunnel pair, mesh latency against direct. */
export const THROUGHPUT_VS_STUNNEL = 0.9;
export const ADDED_P50_US = 200;

export interface DatapathVerdict {
  mode: RedirectMode;
  throughputVsStunnel: number;
  throughputMet: boolean;
  addedP50Us: number;
  latencyMet: boolean;
}

export function datapathVerdicts(results: DatapathResult[]): DatapathVerdict[] {
  return results.map((r) => {
    const { direct, mesh, stunnel } = r.paths;
    const throughputVsStunnel = mesh.iperf.gbps / stunnel.iperf.gbps;
    const addedP50Us = mesh.rr.persistent.p50 - direct.rr.persistent.p50;
    return {
      mode: r.mode,
      throughputVsStunnel,
      throughputMet: throughputVsStunnel >= THROUGHPUT_VS_STUNNEL,
      addedP50Us,
      latencyMet: addedP50Us <= ADDED_P50_US,
    };
  });
}

/** A data-path run: its redirection backend (HBONE is carried by the native relay in every run). */
const runLabel = (r: { mode: RedirectMode }): string => r.mode;

const PATH_LABEL: Record<PathName, string> = { direct: 'direct TCP', mesh: 'mesh (HBONE, 2 agents)', stunnel: 'stunnel mTLS pair' };

/** CPU of what carries the traffic: the agents for mesh, the stunnel pair for stunnel (the agents' share is ~0 there). */
function carrierCpu(which: PathName, i: IperfResult): number[] {
  return which === 'stunnel' ? i.stunnelCpuS : i.agentCpuS;
}

/** CPU seconds the carriers of a path spent per GB (1e9 bytes) the iperf3 server received. */
function cpuPerGb(which: PathName, i: IperfResult): number {
  return carrierCpu(which, i).reduce((a, b) => a + b, 0) / (i.bytes / 1e9);
}

export function reportDatapath(o: DatapathOpts, results: DatapathResult[], lines: string[]): DatapathVerdict[] {
  lines.push(
    `### Data path: client pod on node 0 -> server pod on node 1; direct = namespaces not enrolled; mesh = both pods enrolled (HBONE: mutual TLS 1.3 + HTTP/2 CONNECT to 15008, through both agents); stunnel = a stunnel mutual-TLS 1.3 pair (client in the source pod, server in the destination pod) between the non-enrolled pods${o.pin ? '; node 0 (client, its agent, stunnel client) pinned to CPU 0, node 1 (server, its agent, stunnel server) to CPU 1' : ''}`,
  );
  lines.push('');
  lines.push(`| backend | path | iperf3 ${o.iperfSeconds} s Gbit/s | vs direct | vs stunnel | retransmits | tunnel CPU s (node0 + node1) | tunnel CPU s per GB | machine busy CPU s |`);
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    for (const which of PATH_NAMES) {
      const i = r.paths[which].iperf;
      const cpu = carrierCpu(which, i);
      const perGb = cpuPerGb(which, i);
      lines.push(
        `| ${runLabel(r)} | ${PATH_LABEL[which]} | ${f2(i.gbps)} | ${ratio(i.gbps, r.paths.direct.iperf.gbps)} | ${ratio(i.gbps, r.paths.stunnel.iperf.gbps)} | ${f0(i.retransmits)} | ${which === 'direct' ? '-' : cpu.map(f2).join(' + ')} | ${which === 'direct' ? '-' : f2(perGb)} | ${f2(i.machineBusyS)} of ${f0(i.wallS * os.availableParallelism())} |`,
      );
    }
  }
  lines.push('');
  lines.push(
    `Request/response (µs): ${o.rrBlocks} x ${o.rounds} round trips of 1 KiB on one persistent connection, ${o.rrBlocks} x ${o.conns} new connections each timed to the end of its first 1 KiB round trip (warm pool: untimed connections first, so mesh connections are new CONNECT streams on a pooled HBONE connection; stunnel does a TLS handshake per connection); blocks rotate between the paths, samples pooled; added and ratio are against direct:`,
  );
  lines.push('');
  lines.push('| backend | path | RR p50 | RR p99 | RR p50 added | RR p50 ratio | new conn p50 | new conn p99 | new conn p50 added | new conn p50 ratio |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    const d = r.paths.direct.rr;
    for (const which of PATH_NAMES) {
      const x = r.paths[which].rr;
      const isBase = which === 'direct';
      lines.push(
        `| ${runLabel(r)} | ${PATH_LABEL[which]} | ${f0(x.persistent.p50)} | ${f0(x.persistent.p99)} | ${isBase ? '-' : signed(x.persistent.p50 - d.persistent.p50, 0)} | ${isBase ? '1.00x' : ratio(x.persistent.p50, d.persistent.p50)} | ${f0(x.newConnection.p50)} | ${f0(x.newConnection.p99)} | ${isBase ? '-' : signed(x.newConnection.p50 - d.newConnection.p50, 0)} | ${isBase ? '1.00x' : ratio(x.newConnection.p50, d.newConnection.p50)} |`,
      );
    }
  }
  lines.push('');
  for (const r of results) {
    const blocks = (which: PathName): string => r.paths[which].rr.blockP50.persistent.map(f0).join(' / ');
    lines.push(
      `[${runLabel(r)}] per-block RR p50 µs: direct ${blocks('direct')}; mesh ${blocks('mesh')}; stunnel ${blocks('stunnel')}. HBONE pool of the client agent during the timed blocks: ${r.pool.connectionsDialled} connection(s) dialled, ${r.pool.streamsOpened} CONNECT streams, ${r.pool.connectFailures} failures. ${r.stunnel.version}: negotiated ${r.stunnel.negotiated} (HBONE offers the same TLS 1.3 suites), a client without a certificate is refused.`,
    );
  }
  lines.push('');
  const verdicts = datapathVerdicts(results);
  lines.push(
    `Target, mesh throughput >= ${THROUGHPUT_VS_STUNNEL}x the stunnel pair: ` +
      verdicts
        .map((v) => {
          const r = results.find((x) => x.mode === v.mode);
          const perGb = (which: PathName): string => (r ? f2(cpuPerGb(which, r.paths[which].iperf)) : 'n/a');
          return `**${runLabel(v)}: ${v.throughputMet ? 'MET' : 'MISSED'}** (${f2(r?.paths.mesh.iperf.gbps)} vs ${f2(r?.paths.stunnel.iperf.gbps)} Gbit/s = ${f2(v.throughputVsStunnel)}x; tunnel CPU s per GB: agents ${perGb('mesh')}, stunnel ${perGb('stunnel')})`;
        })
        .join('; '),
  );
  lines.push('');
  lines.push(
    `Target, mesh added p50 on a persistent connection <= ${ADDED_P50_US} µs: ` +
      verdicts
        .map((v) => {
          const r = results.find((x) => x.mode === v.mode);
          const st = r ? r.paths.stunnel.rr.persistent.p50 - r.paths.direct.rr.persistent.p50 : Number.NaN;
          return `**${runLabel(v)}: ${v.latencyMet ? 'MET' : 'MISSED'}** (${signed(v.addedP50Us, 0)} µs; the stunnel pair adds ${signed(st, 0)} µs)`;
        })
        .join('; '),
  );
  lines.push('');
  return verdicts;
}
