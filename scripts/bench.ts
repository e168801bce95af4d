// Benchmark: CNI ADD latency of the chain with ambient-cni vs the bridge plugin alone, and throughput / request-response
// latency through the in-pod redirection vs direct pod-to-pod, on the simulated cluster. Prints ratios to an in-run baseline; never asserts timings.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import {
  type AgentProcess,
  listNetns,
  type PluginInvocation,
  type PodSpec,
  type RedirectMode,
  REPO_ROOT,
  Testbed,
  type TestbedOptions,
  type TestbedPod,
} from '../test/testbed/index.js';

// ---------------------------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: bash scripts/bench.sh [options]
  --modes LIST         redirection backends for the enrolled chain and the data path (default iptables,nftables)
  --pods N             pods per chain for the sequential ADD measurement (default 50)
  --warmup N           warm-up ADDs per chain, not counted (default 2)
  --concurrency N      also add N-at-a-time batches of --pods pods per chain; 0 skips it (default 10)
  --iperf-seconds S    iperf3 duration per path (default 5)
  --rounds N           1 KiB round trips on one connection, per block (default 2000)
  --conns N            new connections, each timed to its first round trip, per block (default 200)
  --rr-blocks N        request/response blocks per path, direct and mesh alternating, pooled (default 3)
  --no-pin             let the scheduler place data-path processes (default: node 0's client pod and agent on CPU 0,
                       node 1's server pod and agent on CPU 1, like two 1-core machines)
  --only WHAT          add | datapath (default: both)
  --out FILE           raw results (default .bench/results.json)`;

interface Opts {
  modes: RedirectMode[];
  pods: number;
  warmup: number;
  concurrency: number;
  iperfSeconds: number;
  rounds: number;
  conns: number;
  rrBlocks: number;
  pin: boolean;
  only: 'add' | 'datapath' | undefined;
  out: string;
}

function parseOpts(argv: string[]): Opts {
  const { values } = parseArgs({
    args: argv,
    options: {
      modes: { type: 'string', default: 'iptables,nftables' },
      pods: { type: 'string', default: '50' },
      warmup: { type: 'string', default: '2' },
      concurrency: { type: 'string', default: '10' },
      'iperf-seconds': { type: 'string', default: '5' },
      rounds: { type: 'string', default: '2000' },
      conns: { type: 'string', default: '200' },
      'rr-blocks': { type: 'string', default: '3' },
      only: { type: 'string' },
      out: { type: 'string', default: join(REPO_ROOT, '.bench/results.json') },
      'no-pin': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
    allowPositionals: false,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  const int = (name: string, v: string, min: number): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new UsageError(`--${name} must be an integer >= ${min}, got ${v}`);
    return n;
  };
  const modes = values.modes.split(',').map((m) => m.trim()).filter((m) => m !== '');
  for (const m of modes) if (m !== 'iptables' && m !== 'nftables') throw new UsageError(`--modes: unknown backend ${m}`);
  if (modes.length === 0) throw new UsageError('--modes: give at least one backend');
  const only = values.only;
  if (only !== undefined && only !== 'add' && only !== 'datapath') throw new UsageError(`--only must be add or datapath, got ${only}`);
  return {
    modes: [...new Set(modes)] as RedirectMode[],
    pods: int('pods', values.pods, 2),
    warmup: int('warmup', values.warmup, 0),
    concurrency: int('concurrency', values.concurrency, 0),
    iperfSeconds: int('iperf-seconds', values['iperf-seconds'], 1),
    rounds: int('rounds', values.rounds, 10),
    conns: int('conns', values.conns, 1),
    rrBlocks: int('rr-blocks', values['rr-blocks'], 1),
    pin: !values['no-pin'] && os.availableParallelism() >= 2,
    only,
    out: values.out,
  };
}

class UsageError extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Interrupts: the testbed library already destroys live testbeds on SIGINT/SIGTERM/SIGHUP and then re-raises the
// signal. We only stop creating new things: a once-listener sets a flag that every step checks.

class Interrupted extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
  }
}
let interruptedBy: NodeJS.Signals | undefined;
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(s, () => {
    interruptedBy ??= s;
    process.stderr.write(`\nbench: ${s}, tearing down the testbeds...\n`);
  });
}
function checkInterrupted(): void {
  if (interruptedBy !== undefined) throw new Interrupted(interruptedBy);
}

function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

// ---------------------------------------------------------------------------------------------------------------
// Statistics

interface Dist {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Linear interpolation between closest ranks. With 50 samples p99 lies between the two largest. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(idx);
  const hi = Math.min(sorted.length - 1, lo + 1);
  const a = sorted[lo] ?? Number.NaN;
  const b = sorted[hi] ?? Number.NaN;
  return a + (b - a) * (idx - lo);
}

function dist(values: number[]): Dist {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return {
    n: s.length,
    min: s[0] ?? Number.NaN,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[s.length - 1] ?? Number.NaN,
    mean: s.length === 0 ? Number.NaN : s.reduce((x, y) => x + y, 0) / s.length,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Small typed readers for JSON we did not produce (no `any`)

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);
function path(v: unknown, ...keys: string[]): unknown {
  let cur = v;
  for (const k of keys) {
    if (!isObj(cur)) return undefined;
    cur = cur[k];
  }
  return cur;
}
function jsonLines(text: string): Json[] {
  const out: Json[] = [];
  for (const line of text.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const v: unknown = JSON.parse(line);
      if (isObj(v)) out.push(v);
    } catch {
      // not a JSON line
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Testbed lifetime

const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };
const createdIds: string[] = [];

/** Create the testbeds in order, run fn, and always destroy every one that was created. */
async function withTestbeds<T>(optsList: TestbedOptions[], fn: (tbs: Testbed[]) => Promise<T>): Promise<T> {
  const tbs: Testbed[] = [];
  try {
    for (const o of optsList) {
      checkInterrupted();
      const tb = await Testbed.create(o);
      createdIds.push(tb.id);
      tbs.push(tb);
    }
    return await fn(tbs);
  } finally {
    const t0 = performance.now();
    const results = await Promise.allSettled(tbs.map((tb) => tb.destroy()));
    for (const r of results) {
      if (r.status === 'rejected') process.stderr.write(`bench: teardown problem: ${String(r.reason)}\n`);
    }
    if (tbs.length > 0) progress(`destroyed ${tbs.length} testbed(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// 1. CNI ADD latency

interface AddSample {
  pod: string;
  /** Whole chain (every plugin, as the runtime ran them). */
  chainMs: number;
  bridgeMs: number;
  /** The ambient-cni exec, including its wait for the agent's verdict. */
  ambientMs: number | undefined;
  /** ambient-cni's own log: 'asking agent to enroll pod' -> 'agent verdict' (ms-resolution timestamps). */
  agentRoundTripMs: number | undefined;
  /** The agent's 'pod enrolled' log record: rules + listeners + probe target. */
  enrolMs: number | undefined;
}

interface ChainResult {
  key: string;
  label: string;
  mode: RedirectMode | undefined;
  sequential: AddSample[];
  concurrent: AddSample[];
  /** Wall time of the whole concurrent batch. */
  concurrentWallMs: number | undefined;
  /** VERSION execs of each plugin of the chain (the price of starting the executable at all), and NODE_BARE. */
  versionMs: Record<string, number[]>;
  /** Whole-chain DEL of every pod at the end, 4 at a time (raw results only). */
  delMs: number[];
}

/** Key in versionMs: `node -e 0` in the node netns. */
const NODE_BARE = 'node -e 0';

function pluginInvocation(invs: PluginInvocation[], plugin: string): PluginInvocation | undefined {
  return invs.find((i) => i.command === 'ADD' && i.plugin === plugin);
}

function sampleOf(pod: TestbedPod): AddSample {
  const invs = pod.addOutcome.invocations;
  const amb = pluginInvocation(invs, 'ambient-cni');
  let rtt: number | undefined;
  if (amb !== undefined) {
    const recs = jsonLines(amb.stderr);
    const asked = num(recs.find((r) => r.msg === 'asking agent to enroll pod')?.time);
    const answered = num(recs.find((r) => r.msg === 'agent verdict')?.time);
    if (asked !== undefined && answered !== undefined) rtt = answered - asked;
  }
  return {
    pod: pod.key,
    chainMs: pod.addOutcome.durationMs,
    bridgeMs: pluginInvocation(invs, 'bridge')?.durationMs ?? Number.NaN,
    ambientMs: amb?.durationMs,
    agentRoundTripMs: rtt,
    enrolMs: undefined,
  };
}

async function attachEnrolTimes(agent: AgentProcess, samples: AddSample[]): Promise<void> {
  const byPod = new Map<string, number>();
  for (const r of await agent.logs()) {
    const ms = num(r.ms);
    if (r.msg === 'pod enrolled' && typeof r.pod === 'string' && ms !== undefined) byPod.set(r.pod, ms);
  }
  for (const s of samples) s.enrolMs = byPod.get(s.pod);
}

async function benchAdd(o: Opts): Promise<ChainResult[]> {
  const chains: { key: string; label: string; mode: RedirectMode | undefined; tb: TestbedOptions }[] = [
    { key: 'bridge', label: 'bridge alone (baseline)', mode: undefined, tb: { nodes: 1, withAmbientCni: false, agent: false } },
    ...o.modes.map((m) => ({
      key: `ambient-${m}`,
      label: `bridge + ambient-cni, agent ${m}`,
      mode: m,
      tb: { nodes: 1, redirectMode: m, agentLogLevel: 'info' },
    })),
    // The same plugin code without the native fast path: every ADD starts Node (what a Node-only plugin costs).
    {
      key: `node-plugin-${o.modes[0] ?? 'iptables'}`,
      label: `bridge + ambient-cni as a Node process only, agent ${o.modes[0] ?? 'iptables'}`,
      mode: o.modes[0] ?? 'iptables',
      tb: { nodes: 1, redirectMode: o.modes[0] ?? 'iptables', agentLogLevel: 'info', cniPlugin: 'node' },
    },
  ];
  progress(`ADD latency: ${chains.length} single-node testbeds (${chains.map((c) => c.key).join(', ')})`);
  return withTestbeds(
    chains.map((c) => c.tb),
    async (tbs) => {
      const results: ChainResult[] = chains.map((c) => ({
        key: c.key,
        label: c.label,
        mode: c.mode,
        sequential: [],
        concurrent: [],
        concurrentWallMs: undefined,
        versionMs: {},
        delMs: [],
      }));
      for (const tb of tbs) await tb.setNamespace('bench', AMBIENT);

      // Warm-up (page cache, first exec of each binary), then the measured sequential ADDs. Chains are interleaved
      // pod by pod so that whatever else the machine does at a given moment hits every chain alike.
      for (let w = 0; w < o.warmup; w++) {
        for (const tb of tbs) {
          checkInterrupted();
          await tb.addPod({ node: 0, namespace: 'bench', name: `warm${w}` });
        }
      }
      for (let i = 0; i < o.pods; i++) {
        for (const [j, tb] of tbs.entries()) {
          checkInterrupted();
          const pod = await tb.addPod({ node: 0, namespace: 'bench', name: `s${i}` });
          results[j]?.sequential.push(sampleOf(pod));
        }
        if ((i + 1) % 10 === 0) progress(`  sequential ADDs: ${i + 1}/${o.pods} per chain`);
      }

      if (o.concurrency > 0) {
        for (const [j, tb] of tbs.entries()) {
          checkInterrupted();
          const specs: PodSpec[] = Array.from({ length: o.pods }, (_, i) => ({ node: 0, namespace: 'bench', name: `c${i}` }));
          const t0 = performance.now();
          const pods = await tb.addPods(specs, { concurrency: o.concurrency });
          const r = results[j];
          if (r === undefined) continue;
          r.concurrentWallMs = performance.now() - t0;
          r.concurrent = pods.map(sampleOf);
          progress(`  ${o.concurrency} concurrent ADDs x ${o.pods} pods on ${r.key}: ${(r.concurrentWallMs / 1000).toFixed(1)} s`);
        }
      }

      // What one exec of each plugin costs with no work to do (node start-up for ambient-cni).
      for (const [j, tb] of tbs.entries()) {
        const node = tb.node(0);
        const r = results[j];
        if (r === undefined) continue;
        for (const plugin of node.conflist.plugins) {
          const times: number[] = [];
          for (let k = 0; k < 10; k++) {
            checkInterrupted();
            times.push((await node.cni.version(plugin)).invocation.durationMs);
          }
          r.versionMs[plugin.type] = times;
        }
        if (node.conflist.plugins.some((p) => p.type === 'ambient-cni')) {
          // The floor under any Node.js plugin: the runtime starting and exiting, launched the same way (ip netns exec).
          const bare: number[] = [];
          for (let k = 0; k < 10; k++) {
            checkInterrupted();
            const t0 = performance.now();
            await tb.nodeExec(0, process.execPath, ['-e', '0']);
            bare.push(performance.now() - t0);
          }
          r.versionMs[NODE_BARE] = bare;
        }
        if (node.agent !== undefined) await attachEnrolTimes(node.agent, [...r.sequential, ...r.concurrent]);
      }

      // Delete the pods a few at a time: destroy() would DEL all of them at once (a hundred plugin processes per
      // testbed on 2 cores). The DEL times go to the raw results only.
      progress(`  deleting ${tbs.reduce((n, tb) => n + tb.pods.length, 0)} pods`);
      for (const [j, tb] of tbs.entries()) {
        const r = results[j];
        const queue = [...tb.pods];
        const worker = async (): Promise<void> => {
          for (let pod = queue.shift(); pod !== undefined; pod = queue.shift()) {
            checkInterrupted();
            r?.delMs.push((await tb.deletePod(pod, { force: true })).durationMs);
          }
        };
        await Promise.all(Array.from({ length: 4 }, worker));
      }
      return results;
    },
  );
}

// ---------------------------------------------------------------------------------------------------------------
// 2. Data path

interface IperfResult {
  gbps: number;
  retransmits: number | undefined;
  /** CPU seconds (user+sys) each agent used during the run, node 0 then node 1. */
  agentCpuS: number[];
  /** Busy CPU seconds of the whole machine during the run (all cores; at most nproc x duration). */
  machineBusyS: number;
  wallS: number;
}

interface RrSamples {
  persistent: number[];
  newConnection: number[];
}

/** Pooled over all blocks, µs. */
interface RrResult {
  persistent: Dist;
  newConnection: Dist;
  /** p50 of each block on its own, to show how much the blocks disagree. */
  blockP50: { persistent: number[]; newConnection: number[] };
}

interface PathResult {
  rr: RrResult;
  iperf: IperfResult;
}

interface DatapathResult {
  mode: RedirectMode;
  direct: PathResult;
  mesh: PathResult;
  /** Bytes the client's agent carried outbound for the mesh client and the server's agent inbound (proof of redirection). */
  meshBytes: { clientOutbound: number; serverInbound: number };
}

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** The node process of an agent (AgentProcess.pid is nsenter's pid, which execs the agent; follow a child if it forked). */
function agentNodePid(agent: AgentProcess): number | undefined {
  const pid = agent.pid;
  if (pid === undefined) return undefined;
  try {
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'nsenter') return pid;
    const child = Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(child) && child > 0 ? child : pid;
  } catch {
    return pid;
  }
}

function procCpuSeconds(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return Number.NaN;
  }
}

function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0); // user nice system idle iowait irq softirq steal
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return (total - idle) / CLK_TCK;
}

const RR = join(REPO_ROOT, 'scripts/bench/rr.mjs');

/**
 * Simulated node i's processes go on CPU i when pinning: two nodes on one 2-core VM behave like two 1-core machines.
 * Without it the scheduler sometimes puts a direct client and server on the same CPU, where a round trip skips the
 * cross-CPU wake-up and takes ~25 µs instead of ~90 µs: the direct baseline, and every ratio, then flips between runs.
 */
function onCpu(o: Opts, pod: TestbedPod, cmd: string, args: string[]): [string, string[]] {
  return o.pin ? ['taskset', ['-c', String(pod.node.index % os.availableParallelism()), cmd, ...args]] : [cmd, args];
}

function pinAgent(agent: AgentProcess, cpu: number): void {
  const pid = agentNodePid(agent);
  if (pid === undefined) throw new Error(`agent on ${agent.spec.nodeName} is not running`);
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}
const RR_PORT = 7000;
const IPERF_PORT = 5201;

function numbers(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number')) throw new Error(`rr.mjs output: ${what} missing`);
  return v as number[];
}

/** One block: rr.mjs client in the client pod, every sample back (µs). */
async function runRr(o: Opts, client: TestbedPod, server: TestbedPod): Promise<RrSamples> {
  const [cmd, args] = onCpu(o, client, process.execPath, [
    RR, 'client', '--host', server.ip, '--port', String(RR_PORT), '--rounds', String(o.rounds), '--conns', String(o.conns), '--raw',
  ]);
  const r = await client.exec(cmd, args, { timeout: 120_000 });
  const samples = path(jsonLines(String(r.stdout)).at(-1), 'samples_us');
  return { persistent: numbers(path(samples, 'persistent'), 'persistent'), newConnection: numbers(path(samples, 'newConnection'), 'newConnection') };
}

function pooled(blocks: RrSamples[]): RrResult {
  return {
    persistent: dist(blocks.flatMap((b) => b.persistent)),
    newConnection: dist(blocks.flatMap((b) => b.newConnection)),
    blockP50: { persistent: blocks.map((b) => dist(b.persistent).p50), newConnection: blocks.map((b) => dist(b.newConnection).p50) },
  };
}

async function runIperf(o: Opts, client: TestbedPod, server: TestbedPod, agents: AgentProcess[]): Promise<IperfResult> {
  const srv = server.spawn(...onCpu(o, server, 'iperf3', ['-s', '-1', '-p', String(IPERF_PORT)]), {
    reject: false,
    timeout: (o.iperfSeconds + 60) * 1000,
  });
  await server.waitForPort(IPERF_PORT);
  const pids = agents.map(agentNodePid);
  const cpu0 = pids.map(procCpuSeconds);
  const busy0 = machineBusySeconds();
  const t0 = performance.now();
  const r = await client.exec(...onCpu(o, client, 'iperf3', ['-c', server.ip, '-p', String(IPERF_PORT), '-t', String(o.iperfSeconds), '-J']), {
    timeout: (o.iperfSeconds + 30) * 1000,
  });
  const wallS = (performance.now() - t0) / 1000;
  const busy1 = machineBusySeconds();
  const cpu1 = pids.map(procCpuSeconds);
  await srv;
  let report: unknown;
  try {
    report = JSON.parse(String(r.stdout));
  } catch {
    throw new Error(`iperf3 -J printed no JSON: ${String(r.stdout).slice(0, 300)}`);
  }
  const bps = num(path(report, 'end', 'sum_received', 'bits_per_second'));
  if (bps === undefined) throw new Error(`iperf3: no end.sum_received.bits_per_second (${String(path(report, 'error') ?? '')})`);
  return {
    gbps: bps / 1e9,
    retransmits: num(path(report, 'end', 'sum_sent', 'retransmits')),
    agentCpuS: cpu1.map((c, i) => c - (cpu0[i] ?? Number.NaN)),
    machineBusyS: busy1 - busy0,
    wallS,
  };
}

interface PodViewLite {
  containerId: string;
  state: string;
  outboundBytes: number;
  inboundBytes: number;
}

async function agentView(tb: Testbed, pod: TestbedPod): Promise<PodViewLite | undefined> {
  const reply = await tb.agent(pod.node.index).request('GET', '/v1/pods');
  const pods = path(reply.body, 'pods');
  if (!Array.isArray(pods)) throw new Error(`agent /v1/pods: unexpected reply ${reply.text.slice(0, 200)}`);
  for (const p of pods) {
    if (path(p, 'containerId') !== pod.containerId) continue;
    return {
      containerId: pod.containerId,
      state: String(path(p, 'state')),
      outboundBytes: num(path(p, 'stats', 'outbound', 'bytesFromDownstream')) ?? 0,
      inboundBytes: num(path(p, 'stats', 'inbound', 'bytesFromDownstream')) ?? 0,
    };
  }
  return undefined;
}

async function benchDatapath(o: Opts, mode: RedirectMode): Promise<DatapathResult> {
  progress(`data path [${mode}]: 2-node testbed`);
  return withTestbeds([{ nodes: 2, redirectMode: mode, agentLogLevel: 'info' }], async ([tb]) => {
    if (tb === undefined) throw new Error('no testbed');
    await tb.setNamespace('mesh', AMBIENT);
    await tb.setNamespace('plain', {});
    const [meshClient, meshServer, plainClient, plainServer] = await tb.addPods([
      { node: 0, namespace: 'mesh', name: 'client' },
      { node: 1, namespace: 'mesh', name: 'server' },
      { node: 0, namespace: 'plain', name: 'client' },
      { node: 1, namespace: 'plain', name: 'server' },
    ]);
    if (!meshClient || !meshServer || !plainClient || !plainServer) throw new Error('pods missing');
    for (const [pod, want] of [[meshClient, 'enrolled'], [meshServer, 'enrolled'], [plainClient, 'skipped'], [plainServer, 'skipped']] as const) {
      const state = (await agentView(tb, pod))?.state;
      if (state !== want) throw new Error(`${pod.key} is ${state ?? 'unknown to its agent'}, expected ${want}: the comparison would be meaningless`);
    }
    const agents = [tb.agent(0), tb.agent(1)];
    if (o.pin) agents.forEach((a, i) => pinAgent(a, i % os.availableParallelism()));
    const paths = { direct: [plainClient, plainServer], mesh: [meshClient, meshServer] } as const;

    for (const server of [plainServer, meshServer]) {
      void server.spawn(...onCpu(o, server, process.execPath, [RR, 'server', '--port', String(RR_PORT)]), { reject: false });
      await server.waitForPort(RR_PORT);
    }
    // Blocks alternate direct/mesh (ABBA order) and are pooled: on this VM the direct p50 of a single short run
    // jumps between ~25 and ~90 µs depending on vCPU wake-ups, which a single run would turn into a bogus ratio.
    const blocks: Record<'direct' | 'mesh', RrSamples[]> = { direct: [], mesh: [] };
    progress(`  [${mode}] request/response: ${o.rrBlocks} blocks per path of ${o.rounds} round trips + ${o.conns} new connections`);
    for (let b = 0; b < o.rrBlocks; b++) {
      for (const which of b % 2 === 0 ? (['direct', 'mesh'] as const) : (['mesh', 'direct'] as const)) {
        checkInterrupted();
        blocks[which].push(await runRr(o, paths[which][0], paths[which][1]));
      }
    }
    const rr = { direct: pooled(blocks.direct), mesh: pooled(blocks.mesh) };
    const iperf: Partial<Record<'direct' | 'mesh', IperfResult>> = {};
    for (const which of ['direct', 'mesh'] as const) {
      checkInterrupted();
      progress(`  [${mode}] iperf3 ${which}: ${o.iperfSeconds} s`);
      iperf[which] = await runIperf(o, paths[which][0], paths[which][1], agents);
    }
    const clientView = await agentView(tb, meshClient);
    const serverView = await agentView(tb, meshServer);
    const meshBytes = { clientOutbound: clientView?.outboundBytes ?? 0, serverInbound: serverView?.inboundBytes ?? 0 };
    if (meshBytes.clientOutbound === 0 || meshBytes.serverInbound === 0) {
      throw new Error(`the mesh path did not go through the agents (bytes ${JSON.stringify(meshBytes)})`);
    }
    if (!iperf.direct || !iperf.mesh) throw new Error('missing measurements');
    return { mode, direct: { rr: rr.direct, iperf: iperf.direct }, mesh: { rr: rr.mesh, iperf: iperf.mesh }, meshBytes };
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Report

const BUDGET_MS = 100;
const f1 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(1));
const f0 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(0));
const f2 = (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(2));
const ratio = (x: number, base: number): string => (Number.isFinite(x) && Number.isFinite(base) && base > 0 ? `${(x / base).toFixed(2)}x` : 'n/a');
const signed = (x: number, digits: number): string => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(digits)}` : 'n/a');
const pm = (d: Dist): string => `${f1(d.p50)} / ${f1(d.p99)}`;

interface Machine {
  date: string;
  nproc: number;
  cpu: string;
  kernel: string;
  node: string;
  loadavg: number[];
}

interface BudgetVerdict {
  chain: string;
  mode: RedirectMode;
  addedP99Ms: number;
  ambientCniP99Ms: number;
  met: boolean;
}

function addStats(samples: AddSample[]): Record<'chain' | 'bridge' | 'ambient' | 'agentRoundTrip' | 'enrol', Dist> {
  return {
    chain: dist(samples.map((s) => s.chainMs)),
    bridge: dist(samples.map((s) => s.bridgeMs)),
    ambient: dist(samples.flatMap((s) => (s.ambientMs === undefined ? [] : [s.ambientMs]))),
    agentRoundTrip: dist(samples.flatMap((s) => (s.agentRoundTripMs === undefined ? [] : [s.agentRoundTripMs]))),
    enrol: dist(samples.flatMap((s) => (s.enrolMs === undefined ? [] : [s.enrolMs]))),
  };
}

function reportAdd(o: Opts, chains: ChainResult[], lines: string[]): BudgetVerdict[] {
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

function reportDatapath(o: Opts, results: DatapathResult[], lines: string[]): void {
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

// ---------------------------------------------------------------------------------------------------------------
// Main

async function main(): Promise<number> {
  let o: Opts;
  try {
    o = parseOpts(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
    return 2;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write('bench: must run as root (it creates network namespaces); try: sudo bash scripts/bench.sh\n');
    return 1;
  }
  const machine: Machine = {
    date: new Date().toISOString(),
    nproc: os.availableParallelism(),
    cpu: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
    node: process.version,
    loadavg: os.loadavg().map((x) => Math.round(x * 100) / 100),
  };
  const started = performance.now();
  let chains: ChainResult[] = [];
  const datapath: DatapathResult[] = [];
  try {
    if (o.only !== 'datapath') chains = await benchAdd(o);
    if (o.only !== 'add') for (const mode of o.modes) datapath.push(await benchDatapath(o, mode));
  } catch (err) {
    if (err instanceof Interrupted || interruptedBy !== undefined) {
      process.stderr.write('bench: interrupted; testbeds destroyed, no report\n');
      return 130;
    }
    throw err;
  }
  const totalS = (performance.now() - started) / 1000;

  const lines: string[] = [];
  lines.push(`## ambient-node benchmark`);
  lines.push('');
  lines.push(
    `${machine.date} · ${machine.nproc} cores (${machine.cpu}) · kernel ${machine.kernel} · node ${machine.node} · load average at start ${machine.loadavg.join(' ')} · run took ${totalS.toFixed(0)} s`,
  );
  lines.push('');
  let verdicts: BudgetVerdict[] = [];
  if (chains.length > 0) verdicts = reportAdd(o, chains, lines);
  if (datapath.length > 0) reportDatapath(o, datapath, lines);
  lines.push(`Timings are from this run only and are noisy on a shared 2-core VM: compare ratios, not absolute numbers. p99 of ${o.pods} samples lies between the two slowest.`);
  process.stdout.write(`${lines.join('\n')}\n`);

  mkdirSync(join(o.out, '..'), { recursive: true });
  const raw = {
    machine,
    options: o,
    durationS: totalS,
    add: chains.map((c) => ({
      ...c,
      stats: { sequential: addStats(c.sequential), concurrent: addStats(c.concurrent), del: dist(c.delMs) },
      versionStats: Object.fromEntries(Object.entries(c.versionMs).map(([k, v]) => [k, dist(v)])),
    })),
    budget: { limitMs: BUDGET_MS, verdicts },
    datapath,
  };
  writeFileSync(o.out, `${JSON.stringify(raw, null, 2)}\n`);
  process.stderr.write(`bench: raw numbers in ${o.out}\n`);

  const leaked = (await listNetns()).filter((n) => createdIds.some((id) => n.startsWith(`atb-${id}-`)));
  if (leaked.length > 0) {
    process.stderr.write(`bench: WARNING: namespaces left behind: ${leaked.join(' ')}\n`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(`bench: failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    if (err instanceof AggregateError) for (const e of err.errors) process.stderr.write(`  - ${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  },
);
