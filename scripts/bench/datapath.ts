// 2. Data path: a client pod on node 0 and a server pod on node 1, direct (namespace not enrolled) against mesh (both
// pods redirected through their agents): request/response latency with rr.mjs, then iperf3 throughput and CPU cost.
import os from 'node:os';
import { join } from 'node:path';
import { type AgentProcess, type RedirectMode, REPO_ROOT, type Testbed, type TestbedPod } from '../../test/testbed/index.js';
import { agentNodePid, machineBusySeconds, onCpu, pinAgent, procCpuSeconds } from './cpu.js';
import { jsonLines, num, path } from './json.js';
import { AMBIENT, checkInterrupted, progress, withTestbeds } from './run.js';
import { type Dist, dist } from './stats.js';

/** The options this measurement reads. */
export interface DatapathOpts {
  iperfSeconds: number;
  rounds: number;
  conns: number;
  rrBlocks: number;
  /** Node i's client or server pod and agent on CPU i (see onCpu). */
  pin: boolean;
}

export interface IperfResult {
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
export interface RrResult {
  persistent: Dist;
  newConnection: Dist;
  /** p50 of each block on its own, to show how much the blocks disagree. */
  blockP50: { persistent: number[]; newConnection: number[] };
}

export interface PathResult {
  rr: RrResult;
  iperf: IperfResult;
}

export interface DatapathResult {
  mode: RedirectMode;
  direct: PathResult;
  mesh: PathResult;
  /** Bytes the client's agent carried outbound for the mesh client and the server's agent inbound (proof of redirection). */
  meshBytes: { clientOutbound: number; serverInbound: number };
}

const RR = join(REPO_ROOT, 'scripts/bench/rr.mjs');
const RR_PORT = 7000;
const IPERF_PORT = 5201;

function numbers(v: unknown, what: string): number[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number')) throw new Error(`rr.mjs output: ${what} missing`);
  return v as number[];
}

/** One block: rr.mjs client in the client pod, every sample back (µs). */
async function runRr(o: DatapathOpts, client: TestbedPod, server: TestbedPod): Promise<RrSamples> {
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

async function runIperf(o: DatapathOpts, client: TestbedPod, server: TestbedPod, agents: AgentProcess[]): Promise<IperfResult> {
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

export async function benchDatapath(o: DatapathOpts, mode: RedirectMode): Promise<DatapathResult> {
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
