// 5. Scale: the workload directory of a cluster (remote pods on other nodes) through the files source and through the
// kubernetes source (a fake API server over loopback, in this process): RSS, idle CPU, one-pod change latency, CPU per update.
// Each source runs alone in a child (scale-worker.ts) so its RSS and CPU are its own; a 100-pod directory is the baseline.
import { fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FakeKubeApi, kubeconfigFor } from '../../test/fixtures/fake-kube-api.js';
import { AGENT_NODE_FLAGS } from '../../test/testbed/index.js';
import type { ScaleReply, ScaleRequest } from './scale-worker.js';
import { checkInterrupted, progress } from './run.js';
import { dist, f1, f2, type Dist } from './stats.js';

export interface ScaleOpts {
  /** Directory sizes (remote pods) to measure, each against the baseline. */
  scaleSizes: number[];
  /** One-pod changes per run (each waited for before the next). */
  scaleUpdates: number;
}

export type ScaleSource = 'files' | 'kube';

export interface ScaleRun {
  source: ScaleSource;
  pods: number;
  /** Time from the source's start to the directory being built, ms. */
  loadMs: number;
  rssMb: number;
  idleCpuPct: number;
  /** From the change (file renamed into place, or object stored by the API server) to the directory having it, ms. */
  changeMs: Dist;
  /** The worker's CPU over the changes, per change, less harnessCpuMs. */
  cpuPerUpdateMs: number;
  /** The worker's CPU per exchange with the bench alone (expect, armed, applied over IPC, no change): what it adds. */
  harnessCpuMs: number;
  rssAfterUpdatesMb: number;
}

export interface ScaleResult {
  basePods: number;
  podsPerFile: number;
  runs: ScaleRun[];
}

/** Goals from issue 12. */
export const SCALE_GOALS = { kbPerWorkload: 2, idleCpuPct: 1, changeMs: 100, cpuPerUpdateMs: 0.5 };

const BASE_PODS = 100;
const PODS_PER_FILE = 100;
const NAMESPACES = 100;
const IDLE_SECONDS = 4;
const WORKER = new URL('./scale-worker.ts', import.meta.url).pathname;

const podIp = (i: number): string => `10.${64 + ((i >> 16) & 63)}.${(i >> 8) & 255}.${i & 255}`;
const updatedIp = (j: number): string => `10.200.${(j >> 8) & 255}.${j & 255}`;

/** A Pod as the API serves it (without managedFields): what both sources read for pod i. */
function podObject(i: number, ip: string): Record<string, unknown> {
  const app = `app${i % 500}`;
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: { name: `p${i}`, namespace: `ns${i % NAMESPACES}`, uid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, labels: { app, 'pod-template-hash': '7d4b9c8f6d' }, annotations: { 'kubectl.kubernetes.io/default-container': app } },
    spec: { nodeName: `node-${1 + (i % 500)}`, serviceAccountName: `sa${i % 50}`, containers: [{ name: app, image: `registry.local/${app}:1.0`, ports: [{ containerPort: 8080, protocol: 'TCP' }] }] },
    status: { phase: 'Running', hostIP: `192.168.${(i % 500) >> 8}.${i % 250}`, podIP: ip, podIPs: [{ ip }], conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

function namespaceObject(n: number): Record<string, unknown> {
  return { apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns${n}`, labels: { 'istio.io/dataplane-mode': 'ambient' } } };
}

/** Multi-document YAML (JSON is valid YAML flow style; one object a line keeps the generator trivial). */
const yamlDocs = (objects: Record<string, unknown>[]): string => objects.map((o) => `---\n${JSON.stringify(o)}\n`).join('');

/** The child over IPC: send a request, wait for the reply of the given type. */
class Worker {
  private readonly waiting = new Map<ScaleReply['type'], (r: ScaleReply) => void>();
  private readonly exited: Promise<number | null>;
  readonly ready: Promise<ScaleReply & { type: 'ready' }>;

  constructor(private readonly child: ChildProcess) {
    child.on('message', (m: ScaleReply) => {
      const w = this.waiting.get(m.type);
      this.waiting.delete(m.type);
      w?.(m);
    });
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
    this.ready = Promise.race([this.next('ready'), this.exited.then((c) => Promise.reject(new Error(`scale worker exited with ${String(c)} before it was ready`)))]);
  }

  next<T extends ScaleReply['type']>(type: T): Promise<ScaleReply & { type: T }> {
    return new Promise((resolve) => this.waiting.set(type, resolve as (r: ScaleReply) => void));
  }

  async ask<T extends ScaleReply['type']>(req: ScaleRequest, type: T): Promise<ScaleReply & { type: T }> {
    const reply = this.next(type);
    this.child.send(req);
    return reply;
  }

  async stop(): Promise<void> {
    this.child.send({ type: 'stop' } satisfies ScaleRequest);
    const t = setTimeout(() => this.child.kill('SIGKILL'), 10_000);
    await this.exited;
    clearTimeout(t);
  }
}

const wallMs = (): number => performance.timeOrigin + performance.now();

/** One source at one size: load, idle, then `updates` one-pod changes (each a new IP for a different pod). */
async function runOne(o: ScaleOpts, source: ScaleSource, pods: number): Promise<ScaleRun> {
  checkInterrupted();
  const tmp = mkdtempSync(join(tmpdir(), 'bench-scale-'));
  let api: FakeKubeApi | undefined;
  let worker: Worker | undefined;
  try {
    let change: (i: number, ip: string) => void;
    let where: string;
    if (source === 'files') {
      where = join(tmp, 'workloads');
      const dir = where;
      mkdirSync(dir);
      writeFileSync(join(dir, 'namespaces.yaml'), yamlDocs(Array.from({ length: NAMESPACES }, (_, n) => namespaceObject(n))));
      const ips = new Map<number, string>();
      const writeFile = (f: number): void => {
        const objs: Record<string, unknown>[] = [];
        for (let i = f * PODS_PER_FILE; i < Math.min(pods, (f + 1) * PODS_PER_FILE); i++) objs.push(podObject(i, ips.get(i) ?? podIp(i)));
        const name = `pods-${String(f).padStart(4, '0')}.yaml`;
        writeFileSync(join(dir, `.${name}.tmp`), yamlDocs(objs));
        renameSync(join(dir, `.${name}.tmp`), join(dir, name)); // atomic, as a config management tool writes
      };
      for (let f = 0; f * PODS_PER_FILE < pods; f++) writeFile(f);
      change = (i, ip) => {
        ips.set(i, ip);
        writeFile(Math.floor(i / PODS_PER_FILE));
      };
    } else {
      api = await new FakeKubeApi().start();
      const server = api;
      for (let n = 0; n < NAMESPACES; n++) server.put('namespaces', namespaceObject(n));
      for (let i = 0; i < pods; i++) server.put('pods', podObject(i, podIp(i)));
      server.compact(); // the history of the fill is not kept (a watch from rv 0 replays the store instead)
      where = join(tmp, 'kubeconfig');
      writeFileSync(where, kubeconfigFor(server));
      change = (i, ip) => void server.put('pods', podObject(i, ip));
    }
    // The agent's own node flags (its young generation capped at 4 MiB a semi-space): without them V8 grew the worker's
    // to its default 2 x 16 MiB during the load, RSS the agent never has.
    const child = fork(WORKER, [source, where], { execArgv: [...AGENT_NODE_FLAGS, '--import=tsx', '--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    worker = new Worker(child);
    const ready = await worker.ready;
    if (ready.workloads < pods) throw new Error(`${source}: the directory has ${ready.workloads} workloads, expected ${pods}`);
    await new Promise((r) => setTimeout(r, 1000)); // let start-up work (first poll, GC) settle
    const idle = await worker.ask({ type: 'idle', seconds: IDLE_SECONDS }, 'idle');
    const cpu0 = (await worker.ask({ type: 'cpu' }, 'cpu')).cpuMs;
    const changeMs: number[] = [];
    for (let j = 0; j < o.scaleUpdates; j++) {
      checkInterrupted();
      const i = Math.floor((j * pods) / o.scaleUpdates);
      const ip = updatedIp(j);
      await worker.ask({ type: 'expect', ip }, 'armed');
      const applied = worker.next('applied');
      const t0 = wallMs();
      change(i, ip);
      changeMs.push((await applied).atMs - t0);
    }
    const cpu1 = (await worker.ask({ type: 'cpu' }, 'cpu')).cpuMs;
    // The same exchanges without a change (the last change's IP is there: no later change moved its pod): the bench's
    // own share of the CPU above.
    for (let j = 0; j < o.scaleUpdates; j++) {
      const applied = worker.next('applied');
      await worker.ask({ type: 'expect', ip: updatedIp(o.scaleUpdates - 1) }, 'armed');
      await applied;
    }
    const cpu2 = (await worker.ask({ type: 'cpu' }, 'cpu')).cpuMs;
    const after = await worker.ask({ type: 'rss' }, 'rss');
    return {
      source, pods, loadMs: ready.loadMs, rssMb: ready.rssKb / 1024, idleCpuPct: idle.cpuPct, changeMs: dist(changeMs),
      cpuPerUpdateMs: (cpu1 - cpu0 - (cpu2 - cpu1)) / o.scaleUpdates, harnessCpuMs: (cpu2 - cpu1) / o.scaleUpdates, rssAfterUpdatesMb: after.rssKb / 1024,
    };
  } finally {
    await worker?.stop();
    await api?.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

export async function benchScale(o: ScaleOpts): Promise<ScaleResult> {
  const runs: ScaleRun[] = [];
  for (const source of ['files', 'kube'] as const) {
    for (const pods of [BASE_PODS, ...o.scaleSizes]) {
      progress(`scale: ${source} source, ${pods} remote pods, ${o.scaleUpdates} one-pod changes`);
      runs.push(await runOne(o, source, pods));
    }
  }
  return { basePods: BASE_PODS, podsPerFile: PODS_PER_FILE, runs };
}

const verdict = (ok: boolean): string => (ok ? 'met' : '**missed**');

export function reportScale(o: ScaleOpts, r: ScaleResult, lines: string[]): void {
  lines.push(`### Scale: the workload directory of a cluster (remote pods on other nodes, ${NAMESPACES} ambient namespaces)`);
  lines.push('');
  lines.push(`Each source alone in a child process (node + tsx); baseline: a directory of ${r.basePods} pods, same run. Files: ${r.podsPerFile} pods a file, a change renames a rewritten file into place. Kubernetes: a fake API server over loopback in the bench process. A change gives one pod a new IP; ${o.scaleUpdates} changes one after another. Idle CPU over ${IDLE_SECONDS} s. CPU per update: the worker's CPU over the changes less that of as many exchanges with the bench without a change (its IPC, shown apart).`);
  lines.push('');
  lines.push('| source | pods | load ms | RSS MB (KB per pod over baseline) | idle CPU % of a core | change applied p50 / max ms | CPU per update ms (vs baseline) | bench IPC CPU per update ms | RSS after changes MB |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const run of r.runs) {
    const base = r.runs.find((b) => b.source === run.source && b.pods === r.basePods);
    const isBase = run.pods === r.basePods;
    const kb = base && !isBase ? ((run.rssMb - base.rssMb) * 1024) / (run.pods - base.pods) : Number.NaN;
    const vs = base && !isBase && base.cpuPerUpdateMs > 0 ? ` (${f1(run.cpuPerUpdateMs / base.cpuPerUpdateMs)}x)` : '';
    lines.push(`| ${run.source} | ${run.pods} | ${run.loadMs.toFixed(0)} | ${f1(run.rssMb)}${isBase ? ' (baseline)' : ` (${f2(kb)})`} | ${f2(run.idleCpuPct)} | ${f1(run.changeMs.p50)} / ${f1(run.changeMs.max)} | ${f2(run.cpuPerUpdateMs)}${vs} | ${f2(run.harnessCpuMs)} | ${f1(run.rssAfterUpdatesMb)} |`);
  }
  lines.push('');
  const g = SCALE_GOALS;
  for (const run of r.runs.filter((x) => x.pods !== r.basePods)) {
    const base = r.runs.find((b) => b.source === run.source && b.pods === r.basePods);
    const kb = base ? ((run.rssMb - base.rssMb) * 1024) / (run.pods - base.pods) : Number.NaN;
    lines.push(`- ${run.source}, ${run.pods} pods: ≤ ${g.kbPerWorkload} KB per workload ${verdict(kb <= g.kbPerWorkload)}; idle ≤ ${g.idleCpuPct} % ${verdict(run.idleCpuPct <= g.idleCpuPct)}; change ≤ ${g.changeMs} ms ${verdict(run.changeMs.p50 <= g.changeMs)}; ${run.source === 'kube' ? `≤ ${g.cpuPerUpdateMs} ms CPU per update ${verdict(run.cpuPerUpdateMs <= g.cpuPerUpdateMs)}` : `CPU per update ${f1(run.cpuPerUpdateMs / (base?.cpuPerUpdateMs ?? Number.NaN))}x the baseline's (a change re-reads its whole file of ${r.podsPerFile} pods)`}`);
  }
  lines.push('');
}
