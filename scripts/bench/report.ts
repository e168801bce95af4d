// The markdown tables of the report: ADD latency against the bridge-only baseline (with the budget verdicts) and the
// data path, mesh against direct. Appends lines to the caller's report; measures nothing and writes nothing itself.
import os from 'node:os';
import type { RedirectMode } from '../../test/testbed/index.js';
import { type AddOpts, addStats, type ChainResult, NODE_BARE } from './add-latency.js';
import type { DatapathOpts, DatapathResult } from './datapath.js';
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
    `Budget, ADD added by ambient-cni + enrolment p99 <= ${BUDGET_MS} ms (node-plugin-* is the Node-only reference, not what nodes install; judged on both the chain p99 difference and the ambient-cni exec p99): ` +
      verdicts
        .map((v) => `**${v.chain}: ${v.met ? 'MET' : 'MISSED'}** (chain ${signed(v.addedP99Ms, 1)} ms, ambient-cni exec ${f1(v.ambientCniP99Ms)} ms)`)
        .join('; '),
  );
  lines.push('');

  lines.push('Where the ambient-cni time goes (p50 / p99 ms; sequential ADDs, then 10 empty execs of each, all launched via `ip netns exec` like the runtime does):');
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

export function reportDatapath(o: DatapathOpts, results: DatapathResult[], lines: string[]): void {
  lines.push(
    `### Data path: client pod on node 0 -> server pod on node 1; direct = namespace not enrolled, mesh = both pods enrolled (redirected through both agents)${o.pin ? '; node 0 (client, its agent) pinned to CPU 0, node 1 (server, its agent) to CPU 1' : ''}`,
  );
  lines.push('');
  lines.push(`| backend | path | iperf3 ${o.iperfSeconds} s Gbit/s | vs direct | retransmits | agent CPU s (node0 + node1) | machine busy CPU s |`);
  lines.push('|---|---|---:|---:|---:|---:|---:|');
  for (const r of results) {
    for (const which of ['direct', 'mesh'] as const) {
      const i = r[which].iperf;
      lines.push(
        `| ${r.mode} | ${which} | ${f2(i.gbps)} | ${which === 'direct' ? '1.00x' : ratio(i.gbps, r.direct.iperf.gbps)} | ${f0(i.retransmits)} | ${i.agentCpuS.map(f2).join(' + ')} | ${f2(i.machineBusyS)} of ${f0(i.wallS * os.availableParallelism())} |`,
      );
    }
  }
  lines.push('');
  lines.push(
    `Request/response (µs): ${o.rrBlocks} x ${o.rounds} round trips of 1 KiB on one persistent connection, ${o.rrBlocks} x ${o.conns} new connections each timed to the end of its first 1 KiB round trip; direct and mesh blocks alternate, samples pooled:`,
  );
  lines.push('');
  lines.push('| backend | path | RR p50 | RR p99 | RR p50 added | RR p50 ratio | new conn p50 | new conn p99 | new conn p50 added | new conn p50 ratio |');
  lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    const d = r.direct.rr;
    for (const which of ['direct', 'mesh'] as const) {
      const x = r[which].rr;
      const isBase = which === 'direct';
      lines.push(
        `| ${r.mode} | ${which} | ${f0(x.persistent.p50)} | ${f0(x.persistent.p99)} | ${isBase ? '-' : signed(x.persistent.p50 - d.persistent.p50, 0)} | ${isBase ? '1.00x' : ratio(x.persistent.p50, d.persistent.p50)} | ${f0(x.newConnection.p50)} | ${f0(x.newConnection.p99)} | ${isBase ? '-' : signed(x.newConnection.p50 - d.newConnection.p50, 0)} | ${isBase ? '1.00x' : ratio(x.newConnection.p50, d.newConnection.p50)} |`,
      );
    }
  }
  lines.push('');
}
