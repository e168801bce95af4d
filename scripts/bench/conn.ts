// 11. What a connection costs through the mesh: on one 2-node testbed, the mesh pair (HBONE through both agents) against
// the plain pair and a stunnel pair between the plain pods: new connection + first 64 B round trip one at a time, new
// connections/s from 16 workers, 1 KiB round trips on one connection; the agents' CPU per thread and the stunnels'.
import type { AgentProcess, RedirectMode } from '../../test/testbed/index.js';
import { agentNodePid, onCpu, procCpuSeconds, type ThreadCpu, threadCpuSeconds } from './cpu.js';
import { type Route, RR, RR_PORT, TUNNEL, poolStats, runRr, withRrTestbed } from './datapath.js';
import { startStunnelPair } from './stunnel.js';
import { jsonLines, num, path } from './json.js';
import { checkInterrupted, progress } from './run.js';
import { type Dist, dist, f0, f1, f2, f3, ratio, signed } from './stats.js';

export interface ConnOpts {
  connMode: RedirectMode;
  connBlocks: number;
  /** Node i's pods and agent on CPU i (see onCpu). */
  pin: boolean;
  agentCommand?: ((mode: RedirectMode) => string[]) | undefined;
}

/** Goals of issue 12 for this part. */
export const CONN_GOALS = {
  /** New connection + first round trip, mesh p50 at most direct p50 plus this (µs). */
  addedP50Us: 300,
  /** Agent CPU per new connection, each agent (ms). */
  cpuPerConnMs: 0.1,
  /** New connections per second from 16 concurrent clients, mesh at least this times direct. */
  rateVsDirect: 0.8,
  /** Both agents' CPU for 1,000 requests/s of 1 KiB on persistent connections (vCPU). */
  vcpuPer1kRps: 0.06,
} as const;

/** Per block and path: serial new connections, then the rate phase, then persistent round trips. */
const SERIAL_CONNS = 200;
/** Connections of the serial phase's rr.mjs run besides the timed ones (its persistent one, 2 untimed): in its CPU. */
const SERIAL_EXTRA = 3;
const RATE = { concurrency: 16, seconds: 3 } as const;
const PERSISTENT_ROUNDS = 2000;
/** Untimed round trips before the timed ones on the persistent connection: in the phase's CPU too. */
const PERSISTENT_WARMUP = 100;
const PATHS = ['direct', 'mesh', 'stunnel'] as const;
type ConnPath = (typeof PATHS)[number];

/** CPU seconds a phase took: each agent's (node 0's, node 1's) by thread, and each stunnel's; with its wall time. */
interface Cpu {
  threads: [ThreadCpu, ThreadCpu];
  stunnelS: [number, number];
  wallS: number;
}

export interface ConnPathResult {
  /** Serial: µs from connect() to the first 64 B answer, every sample. */
  serialUs: number[];
  serialCpu: Cpu[];
  /** Rate phase per block: completed and failed connections, and CPU. */
  rate: { conns: number; failed: number; wallS: number; cpu: Cpu; p50Us: number }[];
  /** Persistent: 1 KiB round trips per block (the untimed ones too: all are in its CPU), and CPU. */
  persistent: { rounds: number; cpu: Cpu; p50Us: number }[];
}

export interface ConnResult {
  mode: RedirectMode;
  paths: Record<ConnPath, ConnPathResult>;
  /** CONNECT streams the client agent opened during the timed blocks, and HBONE connections it dialled (0 = warm pool). */
  pool: { streams: number; dialled: number };
  /** What the stunnel pair negotiated. */
  stunnel: string;
}

async function cpuOf<T>(agents: AgentProcess[], stunnels: (number | undefined)[], run: () => Promise<T>): Promise<{ value: T; cpu: Cpu }> {
  const pids = agents.map(agentNodePid);
  const a0 = pids.map(threadCpuSeconds);
  const s0 = stunnels.map(procCpuSeconds);
  const t0 = performance.now();
  const value = await run();
  const wallS = (performance.now() - t0) / 1000;
  const a1 = pids.map(threadCpuSeconds);
  const s1 = stunnels.map(procCpuSeconds);
  const nan = { main: Number.NaN, relay: Number.NaN, other: Number.NaN };
  const threads = [0, 1].map((i) => {
    const x = a0[i] ?? nan;
    const y = a1[i] ?? nan;
    return { main: y.main - x.main, relay: y.relay - x.relay, other: y.other - x.other };
  }) as [ThreadCpu, ThreadCpu];
  return {
    value,
    cpu: {
      threads,
      stunnelS: [(s1[0] ?? Number.NaN) - (s0[0] ?? Number.NaN), (s1[1] ?? Number.NaN) - (s0[1] ?? Number.NaN)],
      wallS,
    },
  };
}

async function runRate(o: ConnOpts, r: Route): Promise<{ conns: number; failed: number; wallS: number; p50Us: number }> {
  const [cmd, args] = onCpu(o, r.client, process.execPath, [
    RR, 'rate', '--host', r.host, '--port', String(r.rrPort), '--concurrency', String(RATE.concurrency), '--seconds', String(RATE.seconds), '--size', '64',
  ]);
  const res = await r.client.exec(cmd, args, { timeout: (RATE.seconds + 60) * 1000 });
  const line = jsonLines(String(res.stdout)).at(-1);
  const conns = num(path(line, 'conns'));
  const samples = path(line, 'samples_us');
  if (conns === undefined || !Array.isArray(samples)) throw new Error(`rr.mjs rate printed no result: ${String(res.stdout).slice(0, 200)}`);
  return { conns, failed: num(path(line, 'failed')) ?? Number.NaN, wallS: num(path(line, 'wallS')) ?? Number.NaN, p50Us: dist(samples.filter((x): x is number => typeof x === 'number')).p50 };
}

export async function benchConn(o: ConnOpts): Promise<ConnResult> {
  const mode = o.connMode;
  progress(`connection cost [${mode}]: 2-node testbed`);
  return withRrTestbed(o, mode, async ({ tb, pods, agents }) => {
    const { meshClient, meshServer, plainClient, plainServer } = pods;
    // The rate phases leave thousands of client sockets in TIME_WAIT per block: without reuse, later connects spend
    // milliseconds searching the port range for a free port (seen as a direct p50 of 5 ms in the fourth block).
    for (const c of [plainClient, meshClient]) await c.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1']);
    const tunnel = await startStunnelPair(o, tb, plainClient, plainServer, [TUNNEL.rr]);
    const routes: Record<ConnPath, Route> = {
      direct: { client: plainClient, server: plainServer, host: plainServer.ip, rrPort: RR_PORT, iperfPort: 0 },
      mesh: { client: meshClient, server: meshServer, host: meshServer.ip, rrPort: RR_PORT, iperfPort: 0 },
      stunnel: { client: plainClient, server: plainServer, host: '127.0.0.1', rrPort: TUNNEL.rr.clientPort, iperfPort: 0 },
    };
    const rrOpts = { pin: o.pin, rounds: 0, conns: 0 };
    for (const p of PATHS) await runRr(rrOpts, routes[p], { rounds: 100, conns: 20 }); // untimed: the pool holds a connection
    const pool0 = await poolStats(tb.agent(0));
    const empty = (): ConnPathResult => ({ serialUs: [], serialCpu: [], rate: [], persistent: [] });
    const paths: Record<ConnPath, ConnPathResult> = { direct: empty(), mesh: empty(), stunnel: empty() };
    const measure = <T>(run: () => Promise<T>): Promise<{ value: T; cpu: Cpu }> => cpuOf(agents, tunnel.pids, run);
    progress(`  [${mode}] ${o.connBlocks} blocks per path: ${SERIAL_CONNS} new connections one at a time, ${RATE.seconds} s of ${RATE.concurrency} concurrent, ${PERSISTENT_ROUNDS} 1 KiB round trips`);
    for (let b = 0; b < o.connBlocks; b++) {
      for (const p of b % 2 === 0 ? PATHS : [...PATHS].reverse()) {
        checkInterrupted();
        const r = routes[p];
        const serial = await measure(() => runRr(rrOpts, r, { rounds: 0, conns: SERIAL_CONNS }, ['--size', '64', '--warmup', '0', '--conn-warmup', String(SERIAL_EXTRA - 1)]));
        paths[p].serialUs.push(...serial.value.newConnection);
        paths[p].serialCpu.push(serial.cpu);
        const rate = await measure(() => runRate(o, r));
        paths[p].rate.push({ ...rate.value, cpu: rate.cpu });
        const pers = await measure(() => runRr(rrOpts, r, { rounds: PERSISTENT_ROUNDS, conns: 0 }, ['--warmup', String(PERSISTENT_WARMUP), '--conn-warmup', '0']));
        paths[p].persistent.push({ rounds: PERSISTENT_ROUNDS + PERSISTENT_WARMUP, cpu: pers.cpu, p50Us: dist(pers.value.persistent).p50 });
      }
    }
    const pool1 = await poolStats(tb.agent(0));
    const streams = pool1.streams - pool0.streams;
    const want = o.connBlocks * SERIAL_CONNS;
    if (!(streams >= want)) throw new Error(`the client agent opened ${streams} CONNECT streams for at least ${want} mesh connections: the mesh path did not go through it`);
    return { mode, paths, pool: { streams, dialled: pool1.opened - pool0.opened }, stunnel: tunnel.negotiated };
  });
}

/** Each agent's CPU rate while idle, per thread: its CPU over the direct path's phases (nothing of it passes the agents). */
function idleRate(r: ConnResult): [ThreadCpu, ThreadCpu] {
  const d = r.paths.direct;
  const all = [...d.serialCpu, ...d.rate.map((x) => x.cpu), ...d.persistent.map((x) => x.cpu)];
  const wall = all.reduce((a, c) => a + c.wallS, 0);
  const per = (i: 0 | 1, k: keyof ThreadCpu): number => all.reduce((a, c) => a + c.threads[i][k], 0) / wall;
  return [0, 1].map((i) => ({ main: per(i as 0 | 1, 'main'), relay: per(i as 0 | 1, 'relay'), other: per(i as 0 | 1, 'other') })) as [ThreadCpu, ThreadCpu];
}

/** CPU ms per unit for each agent and thread, net of the thread's idle rate over the same wall time. */
function netPer(cpus: Cpu[], units: number, idle: [ThreadCpu, ThreadCpu]): [ThreadCpu, ThreadCpu] {
  const wall = cpus.reduce((a, c) => a + c.wallS, 0);
  const per = (i: 0 | 1, k: keyof ThreadCpu): number => ((cpus.reduce((a, c) => a + c.threads[i][k], 0) - idle[i][k] * wall) / units) * 1000;
  return [0, 1].map((i) => ({ main: per(i as 0 | 1, 'main'), relay: per(i as 0 | 1, 'relay'), other: per(i as 0 | 1, 'other') })) as [ThreadCpu, ThreadCpu];
}

/** The two stunnels' CPU ms per unit (client, server). */
function stunnelPer(cpus: Cpu[], units: number): [number, number] {
  return [0, 1].map((i) => (cpus.reduce((a, c) => a + (c.stunnelS[i] ?? 0), 0) / units) * 1000) as [number, number];
}

const total = (t: ThreadCpu): number => t.main + t.relay + t.other;

export interface ConnFigures {
  serial: Record<ConnPath, Dist>;
  addedP50Us: number;
  /** ms per new connection, [client agent, server agent] by thread: one at a time, and in the rate phase. */
  cpuPerConnMs: [ThreadCpu, ThreadCpu];
  cpuPerConnRateMs: [ThreadCpu, ThreadCpu];
  ratePerS: Record<ConnPath, number>;
  rateFailed: Record<ConnPath, number>;
  /** Each agent's CPU per 1 KiB round trip on a persistent connection (ms), by thread; and the stunnels'. */
  perRequestMs: [ThreadCpu, ThreadCpu];
  stunnelPerRequestMs: [number, number];
  /** Both agents' (both stunnels') vCPU for 1,000 req/s of 1 KiB on a persistent connection. */
  vcpuPer1kRps: number;
  stunnelVcpuPer1kRps: number;
  persistentP50Us: Record<ConnPath, number>;
  idleCpuPct: [number, number];
}

export function connFigures(r: ConnResult): ConnFigures {
  const idle = idleRate(r);
  const m = r.paths.mesh;
  const st = r.paths.stunnel;
  const serial = { direct: dist(r.paths.direct.serialUs), mesh: dist(m.serialUs), stunnel: dist(st.serialUs) };
  const rateOf = (p: ConnPath): number => {
    const x = r.paths[p].rate;
    return x.reduce((a, b) => a + b.conns, 0) / x.reduce((a, b) => a + b.wallS, 0);
  };
  const failed = (p: ConnPath): number => r.paths[p].rate.reduce((a, b) => a + b.failed, 0);
  const rounds = (p: ConnPath): number => r.paths[p].persistent.reduce((a, b) => a + b.rounds, 0);
  const perRequestMs = netPer(m.persistent.map((x) => x.cpu), rounds('mesh'), idle);
  const stunnelPerRequestMs = stunnelPer(st.persistent.map((x) => x.cpu), rounds('stunnel'));
  const persistentP50 = (p: ConnPath): number => dist(r.paths[p].persistent.map((x) => x.p50Us)).p50;
  return {
    serial,
    addedP50Us: serial.mesh.p50 - serial.direct.p50,
    // Each block's serial run also made SERIAL_EXTRA untimed connections; its CPU is theirs too.
    cpuPerConnMs: netPer(m.serialCpu, m.serialUs.length + SERIAL_EXTRA * m.serialCpu.length, idle),
    cpuPerConnRateMs: netPer(m.rate.map((x) => x.cpu), m.rate.reduce((a, b) => a + b.conns, 0), idle),
    ratePerS: { direct: rateOf('direct'), mesh: rateOf('mesh'), stunnel: rateOf('stunnel') },
    rateFailed: { direct: failed('direct'), mesh: failed('mesh'), stunnel: failed('stunnel') },
    perRequestMs,
    stunnelPerRequestMs,
    // ms of CPU per request x 1,000 requests/s = ms per s; / 1,000 gives vCPU: the ms figure itself.
    vcpuPer1kRps: total(perRequestMs[0]) + total(perRequestMs[1]),
    stunnelVcpuPer1kRps: stunnelPerRequestMs[0] + stunnelPerRequestMs[1],
    persistentP50Us: { direct: persistentP50('direct'), mesh: persistentP50('mesh'), stunnel: persistentP50('stunnel') },
    idleCpuPct: [total(idle[0]) * 100, total(idle[1]) * 100],
  };
}

const verdict = (met: boolean): string => (met ? 'met' : '**missed**');
const split = (t: ThreadCpu): string => `${f3(total(t))} (main ${f3(t.main)}, relay ${f3(t.relay)}, other ${f3(t.other)})`;

export function reportConn(results: ConnResult[], lines: string[]): void {
  for (const r of results) {
    const f = connFigures(r);
    lines.push(`### Connection cost, agent on ${r.mode}: client pod on node 0, server pod on node 1; mesh = both enrolled (HBONE through both agents, warm pool), direct = neither, stunnel = a stunnel mutual-TLS pair between the plain pods (${r.stunnel})`);
    lines.push('');
    lines.push(`${r.paths.mesh.rate.length} blocks per path, the order turning each block. One at a time: ${SERIAL_CONNS} new connections per block, each timed from connect() to its first 64 B echoed (stunnel: a TLS handshake each). Rate: ${RATE.concurrency} clients making new connections (64 B round trip each) for ${RATE.seconds} s. Persistent: ${PERSISTENT_ROUNDS} round trips of 1 KiB on one connection. Agent CPU from /proc per thread (main = JavaScript, relay = the native HBONE thread, other = the rest), net of each thread's idle rate (agents idle at ${f2(f.idleCpuPct[0])} % and ${f2(f.idleCpuPct[1])} % of a core, read over the direct phases). The client agent opened ${r.pool.streams} CONNECT streams and dialled ${r.pool.dialled} HBONE connections during the blocks.`);
    lines.push('');
    lines.push('| path | new conn. p50 / p99 µs | added p50 | conns/s, 16 concurrent (failed) | vs direct | 1 KiB RR p50 µs (block median) |');
    lines.push('|---|---:|---:|---:|---:|---:|');
    for (const p of PATHS) {
      const s = f.serial[p];
      lines.push(`| ${p} | ${f1(s.p50)} / ${f1(s.p99)} | ${p === 'direct' ? '-' : signed(s.p50 - f.serial.direct.p50, 1)} | ${f0(f.ratePerS[p])} (${f.rateFailed[p]}) | ${ratio(f.ratePerS[p], f.ratePerS.direct)} | ${f1(f.persistentP50Us[p])} |`);
    }
    lines.push('');
    lines.push('| CPU ms | client agent | server agent |');
    lines.push('|---|---:|---:|');
    lines.push(`| per new connection, one at a time | ${split(f.cpuPerConnMs[0])} | ${split(f.cpuPerConnMs[1])} |`);
    lines.push(`| per new connection, ${RATE.concurrency} concurrent | ${split(f.cpuPerConnRateMs[0])} | ${split(f.cpuPerConnRateMs[1])} |`);
    lines.push(`| per 1 KiB round trip, persistent | ${split(f.perRequestMs[0])} | ${split(f.perRequestMs[1])} |`);
    lines.push(`| per 1 KiB round trip, persistent: the stunnel pair | ${f3(f.stunnelPerRequestMs[0])} | ${f3(f.stunnelPerRequestMs[1])} |`);
    lines.push('');
    const worst = Math.max(total(f.cpuPerConnMs[0]), total(f.cpuPerConnMs[1]), total(f.cpuPerConnRateMs[0]), total(f.cpuPerConnRateMs[1]));
    lines.push(`Goals (issue 12), agent on ${r.mode}: new connection p50 <= direct + ${CONN_GOALS.addedP50Us} µs: ${verdict(f.addedP50Us <= CONN_GOALS.addedP50Us)} (${signed(f.addedP50Us, 1)} µs); agent CPU per new connection <= ${CONN_GOALS.cpuPerConnMs} ms each: ${verdict(worst <= CONN_GOALS.cpuPerConnMs)} (at most ${f3(worst)} ms); new connections/s >= ${CONN_GOALS.rateVsDirect}x direct: ${verdict(f.ratePerS.mesh >= CONN_GOALS.rateVsDirect * f.ratePerS.direct)} (${ratio(f.ratePerS.mesh, f.ratePerS.direct)}); <= ${CONN_GOALS.vcpuPer1kRps} vCPU per 1,000 req/s: ${verdict(f.vcpuPer1kRps <= CONN_GOALS.vcpuPer1kRps)} (${f3(f.vcpuPer1kRps)} vCPU; the stunnel pair ${f3(f.stunnelVcpuPer1kRps)} in the same run).`);
    lines.push('');
  }
}
