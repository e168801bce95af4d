// 2. Data path: a client pod on node 0 and a server pod on node 1: direct (not enrolled), mesh (both enrolled: HBONE through
// both agents) and a stunnel mTLS pair between the non-enrolled pods: request/response latency (rr.mjs), iperf3 throughput, CPU.
import os from 'node:os';
import { join } from 'node:path';
import { type AgentProcess, type RedirectMode, REPO_ROOT, type Testbed, type TestbedPod } from '../../test/testbed/index.js';
import { agentNodePid, machineBusySeconds, onCpu, pinAgent, procCpuSeconds } from './cpu.js';
import { jsonLines, num, path } from './json.js';
import { AMBIENT, checkInterrupted, progress, withTestbeds } from './run.js';
import { startStunnelPair } from './stunnel.js';
import { type Dist, dist } from './stats.js';

/** The options this measurement reads. */
export interface DatapathOpts {
  iperfSeconds: number;
  rounds: number;
  conns: number;
  rrBlocks: number;
  /** Node i's client or server pod, agent and stunnel on CPU i (see onCpu). */
  pin: boolean;
  /** The agents' command (e.g. node --cpu-prof ...) instead of the testbed's default, per backend. */
  agentCommand?: ((mode: RedirectMode) => string[]) | undefined;
}

export type PathName = 'direct' | 'mesh' | 'stunnel';
export const PATH_NAMES: readonly PathName[] = ['direct', 'mesh', 'stunnel'];

export interface IperfResult {
  gbps: number;
  /** Bytes the server received. */
  bytes: number;
  retransmits: number | undefined;
  /** CPU seconds (user+sys) each agent used during the run, node 0 then node 1. */
  agentCpuS: number[];
  /** CPU seconds of the stunnel client (node 0) and server (node 1) during the run. */
  stunnelCpuS: number[];
  /** Busy CPU seconds of the whole machine during the run (all cores; at most nproc x duration). */
  machineBusyS: number;
  wallS: number;
}

export interface RrSamples {
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
  paths: Record<PathName, PathResult>;
  /** Bytes the client's agent carried outbound for the mesh client and the server's agent inbound (proof of redirection). */
  meshBytes: { clientOutbound: number; serverInbound: number };
  /** The client agent's HBONE pool during the timed request/response blocks (after the untimed warm-up runs). */
  pool: { connectionsDialled: number; streamsOpened: number; connectFailures: number };
  stunnel: { version: string; negotiated: string };
}

/** How a path is reached from the client pod: direct and mesh dial the server pod, stunnel its local tunnel entrance. */
export interface Route {
  client: TestbedPod;
  server: TestbedPod;
  host: string;
  rrPort: number;
  iperfPort: number;
}

export const RR = join(REPO_ROOT, 'scripts/bench/rr.mjs');
export const RR_PORT = 7000;
/** rr.mjs server's bulk sink (--sink-port), for `rr.mjs bulk`. */
export const SINK_PORT = 7001;
export const IPERF_PORT = 5201;
/** stunnel: client-pod entrance on 127.0.0.1 and server-pod TLS port, per service. */
export const TUNNEL = {
  rr: { name: 'rr', clientPort: 17000, serverPort: 27000, appPort: RR_PORT },
  iperf: { name: 'iperf', clientPort: 15201, serverPort: 25201, appPort: IPERF_PORT },
} as const;

function numbers(v: unknown, what: string, empty = false): number[] {
  if (!Array.isArray(v) || (v.length === 0 && !empty) || !v.every((x) => typeof x === 'number')) throw new Error(`rr.mjs output: ${what} missing`);
  return v as number[];
}

/** One block: rr.mjs client in the client pod, every sample back (µs). Smaller counts make an untimed warm-up run. */
export async function runRr(o: Pick<DatapathOpts, 'rounds' | 'conns' | 'pin'>, r: Route, counts = { rounds: o.rounds, conns: o.conns }, extra: string[] = []): Promise<RrSamples> {
  return (await runRrInterleaved(o, r, [r.host], counts, extra))[0] as RrSamples;
}

/**
 * One block to several hosts of the same server from r.client (e.g. its IPv4 and IPv6 addresses): round trips and new
 * connections interleaved one by one (rr.mjs turns the order each time), so the hosts' samples share the machine's
 * moment; every sample back (µs), in `hosts` order.
 */
export async function runRrInterleaved(
  o: Pick<DatapathOpts, 'rounds' | 'conns' | 'pin'>, r: Route, hosts: string[], counts = { rounds: o.rounds, conns: o.conns }, extra: string[] = [],
): Promise<RrSamples[]> {
  const [cmd, args] = onCpu(o, r.client, process.execPath, [
    RR, 'client', '--host', hosts.join(','), '--port', String(r.rrPort), '--rounds', String(counts.rounds), '--conns', String(counts.conns), '--raw', ...extra,
  ]);
  const res = await r.client.exec(cmd, args, { timeout: 120_000 * hosts.length });
  const lines = jsonLines(String(res.stdout)).slice(-hosts.length);
  if (lines.length !== hosts.length) throw new Error(`rr.mjs printed ${lines.length} results for ${hosts.length} hosts`);
  return lines.map((line) => {
    const samples = path(line, 'samples_us');
    // A phase asked for 0 times has no samples.
    return { persistent: numbers(path(samples, 'persistent'), 'persistent', counts.rounds === 0), newConnection: numbers(path(samples, 'newConnection'), 'newConnection', counts.conns === 0) };
  });
}

/**
 * Bulk bursts from r.client to several hosts of r.server's sink (rr.mjs server --sink-port SINK_PORT), one connection
 * per host, bursts of `chunkMib` MiB interleaved one by one; every burst's Gbit/s back, in `hosts` order.
 */
export async function runBulkInterleaved(o: Pick<DatapathOpts, 'pin'>, r: Route, hosts: string[], bursts: number, chunkMib: number): Promise<number[][]> {
  const [cmd, args] = onCpu(o, r.client, process.execPath, [
    RR, 'bulk', '--host', hosts.join(','), '--port', String(SINK_PORT), '--chunk-mib', String(chunkMib), '--bursts', String(bursts),
  ]);
  const res = await r.client.exec(cmd, args, { timeout: 120_000 * hosts.length });
  const lines = jsonLines(String(res.stdout)).slice(-hosts.length);
  if (lines.length !== hosts.length) throw new Error(`rr.mjs bulk printed ${lines.length} results for ${hosts.length} hosts`);
  return lines.map((line) => numbers(path(line, 'gbps'), 'gbps'));
}

export function pooled(blocks: RrSamples[]): RrResult {
  return {
    persistent: dist(blocks.flatMap((b) => b.persistent)),
    newConnection: dist(blocks.flatMap((b) => b.newConnection)),
    blockP50: { persistent: blocks.map((b) => dist(b.persistent).p50), newConnection: blocks.map((b) => dist(b.newConnection).p50) },
  };
}

/** iperf3 from the client pod to r.host: o.iperfSeconds long, or `bytes` bytes one way when given (iperf3 -n). */
export async function runIperf(
  o: Pick<DatapathOpts, 'pin' | 'iperfSeconds'>,
  r: Route,
  agents: AgentProcess[],
  stunnelPids: (number | undefined)[],
  bytes?: number,
): Promise<IperfResult> {
  const srv = r.server.spawn(...onCpu(o, r.server, 'iperf3', ['-s', '-1', '-p', String(IPERF_PORT)]), {
    reject: false,
    timeout: (o.iperfSeconds + 60) * 1000,
  });
  await r.server.waitForPort(IPERF_PORT);
  const pids = [...agents.map(agentNodePid), ...stunnelPids];
  const cpu0 = pids.map(procCpuSeconds);
  const busy0 = machineBusySeconds();
  const t0 = performance.now();
  const res = await r.client.exec(...onCpu(o, r.client, 'iperf3', ['-c', r.host, '-p', String(r.iperfPort), ...(bytes === undefined ? ['-t', String(o.iperfSeconds)] : ['-n', String(bytes)]), '-J']), {
    timeout: (o.iperfSeconds + 30) * 1000,
  });
  const wallS = (performance.now() - t0) / 1000;
  const busy1 = machineBusySeconds();
  const cpu = pids.map(procCpuSeconds).map((c, i) => c - (cpu0[i] ?? Number.NaN));
  await srv;
  let report: unknown;
  try {
    report = JSON.parse(String(res.stdout));
  } catch {
    throw new Error(`iperf3 -J printed no JSON: ${String(res.stdout).slice(0, 300)}`);
  }
  const bps = num(path(report, 'end', 'sum_received', 'bits_per_second'));
  if (bps === undefined) throw new Error(`iperf3: no end.sum_received.bits_per_second (${String(path(report, 'error') ?? '')})`);
  return {
    gbps: bps / 1e9,
    bytes: num(path(report, 'end', 'sum_received', 'bytes')) ?? Number.NaN,
    retransmits: num(path(report, 'end', 'sum_sent', 'retransmits')),
    agentCpuS: cpu.slice(0, agents.length),
    stunnelCpuS: cpu.slice(agents.length),
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

/**
 * The four pods every data-path comparison uses: an enrolled client and server (namespace `mesh`) and a plain pair
 * (namespace `plain`), clients on node 0 and servers on node 1. Throws when an agent did not enrol them as expected.
 */
export async function meshAndPlainPods(tb: Testbed): Promise<{ meshClient: TestbedPod; meshServer: TestbedPod; plainClient: TestbedPod; plainServer: TestbedPod }> {
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
  return { meshClient, meshServer, plainClient, plainServer };
}

/** The HBONE pool counters of an agent (/v1/certs). */
export async function poolStats(agent: AgentProcess): Promise<{ opened: number; streams: number; failures: number }> {
  const reply = await agent.request('GET', '/v1/certs');
  const h = path(reply.body, 'hbone');
  return { opened: num(path(h, 'connectionsOpened')) ?? Number.NaN, streams: num(path(h, 'streamsOpened')) ?? Number.NaN, failures: num(path(h, 'connectFailures')) ?? Number.NaN };
}

/** The pods of meshAndPlainPods with an rr.mjs server on each server pod, and the two agents (pinned when o.pin). */
export interface RrTestbed {
  tb: Testbed;
  pods: Awaited<ReturnType<typeof meshAndPlainPods>>;
  agents: AgentProcess[];
}

/** A 2-node testbed on `mode` set up as RrTestbed says, for `fn`; destroyed after it (see withTestbeds). */
export function withRrTestbed<T>(o: Pick<DatapathOpts, 'pin' | 'agentCommand'>, mode: RedirectMode, fn: (t: RrTestbed) => Promise<T>): Promise<T> {
  const tbOpts = { nodes: 2, redirectMode: mode, agentLogLevel: 'info', ...(o.agentCommand ? { agentCommand: o.agentCommand(mode) } : {}) };
  return withTestbeds([tbOpts], async ([tb]) => {
    if (tb === undefined) throw new Error('no testbed');
    const pods = await meshAndPlainPods(tb);
    const agents = [tb.agent(0), tb.agent(1)];
    if (o.pin) agents.forEach((a, i) => pinAgent(a, i % os.availableParallelism()));
    for (const server of [pods.plainServer, pods.meshServer]) {
      void server.spawn(...onCpu(o, server, process.execPath, [RR, 'server', '--port', String(RR_PORT)]), { reject: false });
      await server.waitForPort(RR_PORT);
    }
    return fn({ tb, pods, agents });
  });
}

export async function benchDatapath(o: DatapathOpts, mode: RedirectMode): Promise<DatapathResult> {
  progress(`data path [${mode}]: 2-node testbed`);
  return withRrTestbed(o, mode, async ({ tb, pods, agents }) => {
    const { meshClient, meshServer, plainClient, plainServer } = pods;
    const tunnel = await startStunnelPair(o, tb, plainClient, plainServer, [TUNNEL.rr, TUNNEL.iperf]);
    const routes: Record<PathName, Route> = {
      direct: { client: plainClient, server: plainServer, host: plainServer.ip, rrPort: RR_PORT, iperfPort: IPERF_PORT },
      mesh: { client: meshClient, server: meshServer, host: meshServer.ip, rrPort: RR_PORT, iperfPort: IPERF_PORT },
      stunnel: { client: plainClient, server: plainServer, host: '127.0.0.1', rrPort: TUNNEL.rr.clientPort, iperfPort: TUNNEL.iperf.clientPort },
    };

    // Untimed warm-up of every path: the HBONE pool holds a connection and stunnel's session cache an entry before any
    // block is timed, so "new connection" means a new CONNECT stream on a pooled HBONE connection (checked below).
    for (const which of PATH_NAMES) {
      checkInterrupted();
      await runRr(o, routes[which], { rounds: 100, conns: 5 });
    }
    const pool0 = await poolStats(tb.agent(0));
    // Blocks rotate the order of the paths and are pooled: on this VM the direct p50 of a single short run jumps
    // between ~25 and ~90 µs depending on vCPU wake-ups, which a single run would turn into a bogus ratio.
    const blocks: Record<PathName, RrSamples[]> = { direct: [], mesh: [], stunnel: [] };
    progress(`  [${mode}] request/response: ${o.rrBlocks} blocks per path (${PATH_NAMES.join(', ')}) of ${o.rounds} round trips + ${o.conns} new connections`);
    for (let b = 0; b < o.rrBlocks; b++) {
      for (const which of b % 2 === 0 ? PATH_NAMES : [...PATH_NAMES].reverse()) {
        checkInterrupted();
        blocks[which].push(await runRr(o, routes[which]));
      }
    }
    const pool1 = await poolStats(tb.agent(0));
    const iperf: Partial<Record<PathName, IperfResult>> = {};
    for (const which of PATH_NAMES) {
      checkInterrupted();
      progress(`  [${mode}] iperf3 ${which}: ${o.iperfSeconds} s`);
      iperf[which] = await runIperf(o, routes[which], agents, tunnel.pids);
    }
    const clientView = await agentView(tb, meshClient);
    const serverView = await agentView(tb, meshServer);
    const meshBytes = { clientOutbound: clientView?.outboundBytes ?? 0, serverInbound: serverView?.inboundBytes ?? 0 };
    if (meshBytes.clientOutbound === 0 || meshBytes.serverInbound === 0) {
      throw new Error(`the mesh path did not go through the agents (bytes ${JSON.stringify(meshBytes)})`);
    }
    const result = (which: PathName): PathResult => {
      const i = iperf[which];
      if (i === undefined) throw new Error(`missing iperf3 result for ${which}`);
      return { rr: pooled(blocks[which]), iperf: i };
    };
    return {
      mode,
      paths: { direct: result('direct'), mesh: result('mesh'), stunnel: result('stunnel') },
      meshBytes,
      pool: { connectionsDialled: pool1.opened - pool0.opened, streamsOpened: pool1.streams - pool0.streams, connectFailures: pool1.failures - pool0.failures },
      stunnel: { version: tunnel.version, negotiated: tunnel.negotiated },
    };
  });
}
