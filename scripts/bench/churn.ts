// 7. Pod churn at node scale: cycles of N pods ADDed then DELeted, K at a time, through the whole chain (bridge +
// ambient-cni + agent) and the bridge-only chain in the same run; wall times per batch, the agent's RSS after a forced GC.
import { join } from 'node:path';
import { AGENT_MAIN, AGENT_NODE_FLAGS, type AgentLogRecord, type AgentProcess, type PodSpec, procRssKb, type RedirectMode, REPO_ROOT, type Testbed, type TestbedPod } from '../../test/testbed/index.js';
import { ambientTestbed, BRIDGE_ONLY_TESTBED, deletePodsBatched } from './add-latency.js';
import { agentNodePid, procCpuSeconds } from './cpu.js';
import { num } from './json.js';
import { AMBIENT, checkInterrupted, progress, withTestbeds } from './run.js';
import { dist, f1, f2 } from './stats.js';

export interface ChurnOpts {
  churnModes: RedirectMode[];
  churnCycles: number;
  churnPods: number;
  churnConcurrency: number;
  /** Agents run under node --cpu-prof into DIR/churn-<backend>/ when set. */
  agentCpuProf: string | undefined;
  agentNodeFlags: string[];
}

/** Goals of issue 12. */
export const CHURN_GOALS = { wallRatio: 1.3, rssPerPodKb: 100, flatPct: 5 } as const;

/** One cycle on one chain: ADD all, then DEL all. */
export interface ChurnCycle {
  addWallMs: number;
  delWallMs: number;
  addFailures: string[];
  delFailures: string[];
  /** Whole-chain ADD / DEL duration of each pod (as the runtime saw it). */
  addMs: number[];
  delMs: number[];
  /** Agent only: VmRSS KiB after a forced GC, before the ADDs, with every pod, after the DELs; V8 heap used likewise. */
  rssKb?: { before: number; full: number; after: number };
  heapUsedKb?: { before: number; full: number; after: number };
  /** Agent only: CPU seconds the agent spent in the ADD batch and in the DEL batch. */
  agentCpuS?: { add: number; del: number };
}

export interface ChurnResult {
  mode: RedirectMode;
  pods: number;
  concurrency: number;
  bridge: ChurnCycle[];
  ambient: ChurnCycle[];
  /** How RSS was taken: after `node --expose-gc` + SIGUSR2 ran gc() in the agent (scripts/bench/agent-gc.mjs). */
  gc: string;
}

export const GC_PRELOAD = join(REPO_ROOT, 'scripts/bench/agent-gc.mjs');
const GC_WAIT_MS = 20_000;

/** Runs a full GC in the agent (SIGUSR2 to the preload) and waits for its log line; RSS and heap used after it, KiB. */
export async function gcAndSample(agent: AgentProcess, seq: number): Promise<{ rss: number; heapUsed: number }> {
  const pid = agentNodePid(agent);
  if (pid === undefined) throw new Error('agent is not running');
  process.kill(pid, 'SIGUSR2');
  const rec = await waitForLog(agent, (r) => r.msg === 'bench gc' && r.seq === seq, GC_WAIT_MS, `report GC ${seq}`);
  if (rec.gc !== true) throw new Error('the agent has no gc(): was it started with --expose-gc?');
  await new Promise((r) => setTimeout(r, 200)); // let freed pages go back before reading RSS
  return { rss: procRssKb(pid), heapUsed: (num(rec.heapUsed) ?? Number.NaN) / 1024 };
}

const MEMORY_RELEASE_MS = 1000;
const MEMORY_RELEASE_WAIT_MS = 30_000;

/** The agent's first log record that `match` accepts, polled every 100 ms; throws after `timeoutMs` (`what` says why). */
async function waitForLog(agent: AgentProcess, match: (r: AgentLogRecord) => boolean, timeoutMs: number, what: string): Promise<AgentLogRecord> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const rec = (await agent.logs()).find(match);
    if (rec !== undefined) return rec;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`the agent did not ${what} within ${timeoutMs / 1000} s`);
}

const errText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

/** ADD every spec, `concurrency` at a time; the pods that made it and the failures (the others stay). */
async function addBatch(tb: Testbed, specs: PodSpec[], concurrency: number): Promise<{ pods: TestbedPod[]; failures: string[]; wallMs: number }> {
  const t0 = performance.now();
  try {
    const pods = await tb.addPods(specs, { concurrency });
    return { pods, failures: [], wallMs: performance.now() - t0 };
  } catch (err) {
    const wallMs = performance.now() - t0;
    const failures = err instanceof AggregateError ? err.errors.map(errText) : [errText(err)];
    const names = new Set(specs.map((s) => `${s.namespace ?? 'default'}/${s.name}`));
    return { pods: tb.pods.filter((p) => names.has(p.key)), failures, wallMs };
  }
}

async function cycleOn(tb: Testbed, c: number, o: ChurnOpts, gcSeq: { n: number }): Promise<ChurnCycle> {
  const agent = tb.nodes[0]?.agent;
  const pid = agent === undefined ? undefined : agentNodePid(agent);
  const before = agent === undefined ? undefined : await gcAndSample(agent, ++gcSeq.n);
  const specs: PodSpec[] = Array.from({ length: o.churnPods }, (_, i) => ({ node: 0, namespace: 'churn', name: `c${c}-p${i}` }));
  checkInterrupted();
  const cpu0 = procCpuSeconds(pid);
  const added = await addBatch(tb, specs, o.churnConcurrency);
  const cpu1 = procCpuSeconds(pid);
  const full = agent === undefined ? undefined : await gcAndSample(agent, ++gcSeq.n);
  const cpu2 = procCpuSeconds(pid);
  const t0 = performance.now();
  const del = await deletePodsBatched(tb, added.pods, o.churnConcurrency);
  const delWallMs = performance.now() - t0;
  const cpu3 = procCpuSeconds(pid);
  const after = agent === undefined ? undefined : await gcAndSample(agent, ++gcSeq.n);
  return {
    addWallMs: added.wallMs,
    delWallMs,
    addFailures: added.failures,
    delFailures: del.failures,
    addMs: added.pods.map((p) => p.addOutcome.durationMs),
    delMs: del.ms,
    ...(before && full && after
      ? {
          rssKb: { before: before.rss, full: full.rss, after: after.rss },
          heapUsedKb: { before: before.heapUsed, full: full.heapUsed, after: after.heapUsed },
          agentCpuS: { add: cpu1 - cpu0, del: cpu3 - cpu2 },
        }
      : {}),
  };
}

export async function benchChurn(o: ChurnOpts): Promise<ChurnResult[]> {
  const results: ChurnResult[] = [];
  for (const mode of o.churnModes) {
    const prof = o.agentCpuProf === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(o.agentCpuProf, `churn-${mode}`)}`];
    // The agent's own node flags (test/testbed/repo.ts) unless --agent-node-flags replaces them, as for the data path.
    const flags = o.agentNodeFlags.length > 0 ? o.agentNodeFlags : AGENT_NODE_FLAGS;
    const command = [process.execPath, ...flags, '--expose-gc', `--import=${GC_PRELOAD}`, ...prof, AGENT_MAIN];
    progress(`churn (${mode}): ${o.churnCycles} cycles of ${o.churnPods} pods ADD then DEL, ${o.churnConcurrency} at a time, bridge alone vs the whole chain`);
    results.push(
      // The start-up memory release (platform/memory.ts; 30 s after ready by default) brought forward to 1 s and waited for
      // before the first cycle: every cycle's RSS is then taken after it, not some before and some after.
      await withTestbeds([BRIDGE_ONLY_TESTBED, ambientTestbed(mode, { agentCommand: command, agentEnv: { AMBIENT_MEMORY_RELEASE_MS: String(MEMORY_RELEASE_MS) } })], async ([bridgeTb, ambientTb]) => {
        if (bridgeTb === undefined || ambientTb === undefined) throw new Error('churn: testbeds missing');
        const r: ChurnResult = { mode, pods: o.churnPods, concurrency: o.churnConcurrency, bridge: [], ambient: [], gc: 'node --expose-gc; SIGUSR2 runs gc() twice in the agent (scripts/bench/agent-gc.mjs), RSS read from /proc 200 ms later' };
        const gcSeq = { n: 0 };
        for (const tb of [bridgeTb, ambientTb]) await tb.setNamespace('churn', AMBIENT);
        // Warm-up: one small ADD + DEL batch on each chain (first exec of every binary, the agent's lazy imports).
        for (const tb of [bridgeTb, ambientTb]) {
          const warm = await addBatch(tb, Array.from({ length: 4 }, (_, i) => ({ node: 0, namespace: 'churn', name: `warm-${i}` })), 4);
          await deletePodsBatched(tb, warm.pods, 4);
        }
        const agent = ambientTb.nodes[0]?.agent;
        if (agent !== undefined) await waitForLog(agent, (r) => r.msg === 'start-up memory given back', MEMORY_RELEASE_WAIT_MS, 'give start-up memory back');
        for (let c = 0; c < o.churnCycles; c++) {
          // The chain measured first alternates, so a slow moment of the shared machine does not always hit the same one.
          const order = c % 2 === 0 ? (['bridge', 'ambient'] as const) : (['ambient', 'bridge'] as const);
          for (const which of order) {
            const cyc = await cycleOn(which === 'bridge' ? bridgeTb : ambientTb, c, o, gcSeq);
            r[which].push(cyc);
          }
          const b = r.bridge[c];
          const a = r.ambient[c];
          progress(
            `  cycle ${c + 1}/${o.churnCycles}: ADD ${f1((a?.addWallMs ?? Number.NaN) / 1000)} vs ${f1((b?.addWallMs ?? Number.NaN) / 1000)} s, DEL ${f1((a?.delWallMs ?? Number.NaN) / 1000)} vs ${f1((b?.delWallMs ?? Number.NaN) / 1000)} s; agent RSS ${f1((a?.rssKb?.before ?? Number.NaN) / 1024)} -> ${f1((a?.rssKb?.full ?? Number.NaN) / 1024)} -> ${f1((a?.rssKb?.after ?? Number.NaN) / 1024)} MB`,
          );
        }
        return r;
      }),
    );
  }
  return results;
}

const median = (xs: number[]): number => dist(xs).p50;
const met = (ok: boolean): string => (ok ? 'met' : '**missed**');

/** Pure: the figures the report judges, from one result. */
export function churnFigures(r: ChurnResult): {
  addRatios: number[];
  delRatios: number[];
  addRatio: number;
  delRatio: number;
  /** KiB per pod, per cycle: (RSS with every pod - RSS before the ADDs) / pods. */
  perPodKb: number[];
  perPodHeapKb: number[];
  /** Percent deviation of each cycle's RSS (with every pod; after the DELs) from the first cycle's. */
  fullDriftPct: number[];
  afterDriftPct: number[];
} {
  const ratios = (f: (c: ChurnCycle) => number): number[] => r.ambient.map((a, i) => f(a) / f(r.bridge[i] ?? a));
  const addRatios = ratios((c) => c.addWallMs);
  const delRatios = ratios((c) => c.delWallMs);
  const perPodKb = r.ambient.map((c) => (c.rssKb ? (c.rssKb.full - c.rssKb.before) / r.pods : Number.NaN));
  const perPodHeapKb = r.ambient.map((c) => (c.heapUsedKb ? (c.heapUsedKb.full - c.heapUsedKb.before) / r.pods : Number.NaN));
  const drift = (pick: (c: ChurnCycle) => number | undefined): number[] => {
    const first = pick(r.ambient[0] ?? ({} as ChurnCycle));
    return r.ambient.map((c) => ((pick(c) ?? Number.NaN) / (first ?? Number.NaN) - 1) * 100);
  };
  return {
    addRatios,
    delRatios,
    addRatio: median(addRatios),
    delRatio: median(delRatios),
    perPodKb,
    perPodHeapKb,
    fullDriftPct: drift((c) => c.rssKb?.full),
    afterDriftPct: drift((c) => c.rssKb?.after),
  };
}

export function reportChurn(results: ChurnResult[], lines: string[]): void {
  for (const r of results) {
    const f = churnFigures(r);
    lines.push(`### Pod churn: ${r.ambient.length} cycles of ${r.pods} pods ADDed then DELeted, ${r.concurrency} at a time, 1 node, agent on ${r.mode} (bridge-only chain in the same run, the order alternating per cycle)`);
    lines.push('');
    lines.push('| cycle | ADD wall s: chain / bridge | ratio | DEL wall s: chain / bridge | ratio | agent CPU s ADD / DEL | agent RSS MB before / with pods / after DEL | heap used MB likewise | KB a pod (RSS) |');
    lines.push('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
    r.ambient.forEach((a, i) => {
      const b = r.bridge[i];
      const mb = (x: { before: number; full: number; after: number } | undefined): string => (x ? `${f1(x.before / 1024)} / ${f1(x.full / 1024)} / ${f1(x.after / 1024)}` : 'n/a');
      const fails = a.addFailures.length + a.delFailures.length + (b ? b.addFailures.length + b.delFailures.length : 0);
      lines.push(
        `| ${i + 1}${fails > 0 ? ` (${fails} failed)` : ''} | ${f1(a.addWallMs / 1000)} / ${f1((b?.addWallMs ?? Number.NaN) / 1000)} | ${f2(f.addRatios[i])}x | ${f1(a.delWallMs / 1000)} / ${f1((b?.delWallMs ?? Number.NaN) / 1000)} | ${f2(f.delRatios[i])}x | ${f1(a.agentCpuS?.add)} / ${f1(a.agentCpuS?.del)} | ${mb(a.rssKb)} | ${mb(a.heapUsedKb)} | ${f1(f.perPodKb[i])} |`,
      );
    });
    lines.push('');
    const addP = (xs: number[]): string => `p50 ${f1(dist(xs).p50)} / p99 ${f1(dist(xs).p99)} ms`;
    lines.push(
      `Per pod, all cycles: chain ADD ${addP(r.ambient.flatMap((c) => c.addMs))} (bridge alone ${addP(r.bridge.flatMap((c) => c.addMs))}); chain DEL ${addP(r.ambient.flatMap((c) => c.delMs))} (bridge alone ${addP(r.bridge.flatMap((c) => c.delMs))}). RSS taken after a forced GC: ${r.gc}.`,
    );
    for (const [which, cycles] of [['chain', r.ambient], ['bridge', r.bridge]] as const) {
      const failures = cycles.flatMap((c) => [...c.addFailures, ...c.delFailures]);
      if (failures.length > 0) lines.push('', `${which}: ${failures.length} failed ADD/DEL, first: ${failures[0]}`);
    }
    lines.push('');
    const perPod = median(f.perPodKb);
    const maxDrift = (xs: number[]): number => Math.max(...xs.map((x) => (Number.isFinite(x) ? Math.abs(x) : Number.POSITIVE_INFINITY)));
    const fullDrift = maxDrift(f.fullDriftPct);
    const afterDrift = maxDrift(f.afterDriftPct);
    const last = f.fullDriftPct.length - 1;
    lines.push(`Goals (issue 12), agent on ${r.mode}:`);
    lines.push(`- ADD of ${r.pods} pods, ${r.concurrency} at a time, whole chain vs bridge alone ≤ ${CHURN_GOALS.wallRatio}x: ${met(f.addRatio <= CHURN_GOALS.wallRatio)} (median ${f2(f.addRatio)}x; per cycle ${f.addRatios.map(f2).join(', ')})`);
    lines.push(`- DEL likewise ≤ ${CHURN_GOALS.wallRatio}x: ${met(f.delRatio <= CHURN_GOALS.wallRatio)} (median ${f2(f.delRatio)}x; per cycle ${f.delRatios.map(f2).join(', ')})`);
    lines.push(`- RSS growth per enrolled pod ≤ ${CHURN_GOALS.rssPerPodKb} KB: ${met(perPod <= CHURN_GOALS.rssPerPodKb)} (median ${f1(perPod)} KB over cycles; per cycle ${f.perPodKb.map(f1).join(', ')}; V8 heap used ${f1(median(f.perPodHeapKb))} KB a pod)`);
    lines.push(
      `- RSS flat over ${f.fullDriftPct.length} cycles (±${CHURN_GOALS.flatPct} %): ${met(fullDrift <= CHURN_GOALS.flatPct && afterDrift <= CHURN_GOALS.flatPct)} (with ${r.pods} pods: largest drift from cycle 1 ${f1(fullDrift)} %, last cycle ${f1(f.fullDriftPct[last])} %; after the DELs: largest ${f1(afterDrift)} %, last ${f1(f.afterDriftPct[last])} %)`,
    );
    lines.push('');
  }
}
