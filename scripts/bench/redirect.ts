// 3. Redirection backends side by side: one 2-node testbed per backend, all alive at once and measured in interleaved rounds:
// connect() out of an enrolled pod and into one (connect.py), 1 KiB request/response (rr.mjs), iperf3 with machine CPU per GiB.
import os from 'node:os';
import { join } from 'node:path';
import { type RedirectMode, REPO_ROOT, type Testbed, type TestbedPod } from '../../test/testbed/index.js';
import { machineBusySeconds, onCpu, pinAgent } from './cpu.js';
import { meshAndPlainPods } from './datapath.js';
import { jsonLines, num, path } from './json.js';
import { checkInterrupted, progress, withTestbeds } from './run.js';
import { type Dist, dist, f0, f1, f2, pm, ratio } from './stats.js';

export interface RedirectOpts {
  iperfSeconds: number;
  rounds: number;
  /** Interleaved rounds: each round measures every backend once (order rotating) on every path. */
  redirectRounds: number;
  /** connect() calls per path per round. */
  connects: number;
  pin: boolean;
}

/**
 * out: enrolled client -> plain server (outbound redirection, the agent relays plain TCP: the backend is the only difference);
 * in: plain client -> enrolled server (inbound redirection to 15006); direct: plain -> plain, the same pods' baseline.
 */
export type RedirectPath = 'out' | 'in' | 'direct';
export const REDIRECT_PATHS: readonly RedirectPath[] = ['out', 'in', 'direct'];

export interface RedirectPathResult {
  connect: Dist;
  /** p50 of each round on its own: how much the rounds disagree. */
  roundP50: number[];
  /** 1 KiB round trips on one connection (out and direct only). */
  persistent: Dist;
}

export interface RedirectResult {
  mode: RedirectMode;
  paths: Record<RedirectPath, RedirectPathResult>;
  /** iperf3 on the out and direct paths (medians of the rounds), with the whole machine's busy CPU seconds per GiB received. */
  iperf: Record<'out' | 'direct', Iperf>;
  /** Every out round's iperf3, for the spread. */
  iperfRounds: Iperf[];
  /** conntrack entries in the enrolled client pod after the run. */
  conntrackEntries: number;
}

interface Iperf {
  gbps: number;
  gib: number;
  cpuSPerGib: number;
}

interface Bed {
  mode: RedirectMode;
  tb: Testbed;
  routes: Record<RedirectPath, { client: TestbedPod; server: TestbedPod }>;
  connect: Record<RedirectPath, number[][]>;
  persistent: Record<'out' | 'direct', number[]>;
  iperf: Iperf[];
  iperfDirect: Iperf[];
}

const RR = join(REPO_ROOT, 'scripts/bench/rr.mjs');
const CONNECT = join(REPO_ROOT, 'scripts/bench/connect.py');
const RR_PORT = 7000;
const IPERF_PORT = 5201;

const nums = (v: unknown): number[] => (Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number') : []);

/** 1 KiB round trips on one connection (µs). */
async function rr(o: RedirectOpts, client: TestbedPod, server: TestbedPod, rounds = o.rounds): Promise<number[]> {
  const [cmd, args] = onCpu(o, client, process.execPath, [
    RR, 'client', '--host', server.ip, '--port', String(RR_PORT), '--rounds', String(rounds), '--conns', '1', '--raw',
  ]);
  const res = await client.exec(cmd, args, { timeout: 120_000 });
  return nums(path(jsonLines(String(res.stdout)).at(-1), 'samples_us', 'persistent'));
}

/** connect() alone, n times (µs). */
async function connects(o: RedirectOpts, client: TestbedPod, server: TestbedPod, n = o.connects): Promise<number[]> {
  const res = await client.exec(...onCpu(o, client, '/usr/bin/python3', [CONNECT, server.ip, String(RR_PORT), String(n)]), { timeout: 120_000 });
  return nums(path(jsonLines(String(res.stdout)).at(-1), 'connect_us'));
}

async function iperf(o: RedirectOpts, client: TestbedPod, server: TestbedPod): Promise<Iperf> {
  const srv = server.spawn(...onCpu(o, server, 'iperf3', ['-s', '-1', '-p', String(IPERF_PORT)]), { reject: false, timeout: (o.iperfSeconds + 60) * 1000 });
  await server.waitForPort(IPERF_PORT);
  const busy0 = machineBusySeconds();
  const res = await client.exec(...onCpu(o, client, 'iperf3', ['-c', server.ip, '-p', String(IPERF_PORT), '-t', String(o.iperfSeconds), '-J']), {
    timeout: (o.iperfSeconds + 30) * 1000,
  });
  const busy = machineBusySeconds() - busy0;
  await srv;
  const report: unknown = JSON.parse(String(res.stdout));
  const bps = num(path(report, 'end', 'sum_received', 'bits_per_second')) ?? Number.NaN;
  const gib = (num(path(report, 'end', 'sum_received', 'bytes')) ?? Number.NaN) / 2 ** 30;
  return { gbps: bps / 1e9, gib, cpuSPerGib: busy / gib };
}

async function setUp(o: RedirectOpts, mode: RedirectMode, tb: Testbed): Promise<Bed> {
  const { meshClient, meshServer, plainClient, plainServer } = await meshAndPlainPods(tb);
  for (const p of [meshClient, meshServer, plainClient, plainServer]) {
    // Thousands of connections to one server port: without reuse, TIME_WAIT pushes connect() to milliseconds.
    await p.exec('sysctl', ['-qw', 'net.ipv4.tcp_tw_reuse=1']);
  }
  for (const server of [plainServer, meshServer]) {
    void server.spawn(...onCpu(o, server, process.execPath, [RR, 'server', '--port', String(RR_PORT)]), { reject: false });
    await server.waitForPort(RR_PORT);
  }
  if (o.pin) [tb.agent(0), tb.agent(1)].forEach((a, i) => pinAgent(a, i % os.availableParallelism()));
  const routes = { out: { client: meshClient, server: plainServer }, in: { client: plainClient, server: meshServer }, direct: { client: plainClient, server: plainServer } };
  for (const p of REDIRECT_PATHS) await connects(o, routes[p].client, routes[p].server, 50); // untimed warm-up
  return { mode, tb, routes, connect: { out: [], in: [], direct: [] }, persistent: { out: [], direct: [] }, iperf: [], iperfDirect: [] };
}

export async function benchRedirect(o: RedirectOpts, modes: RedirectMode[]): Promise<RedirectResult[]> {
  progress(`redirection backends [${modes.join(', ')}]: one 2-node testbed each, alive together`);
  const opts = modes.map((mode) => ({ nodes: 2, redirectMode: mode, agentLogLevel: 'info' }));
  return withTestbeds(opts, async (tbs) => {
    const beds: Bed[] = [];
    for (const [i, tb] of tbs.entries()) beds.push(await setUp(o, modes[i] ?? 'iptables', tb));
    progress(`  ${o.redirectRounds} rounds, backends interleaved (order rotating): ${o.connects} connect() per path, ${o.rounds} 1 KiB round trips, iperf3 ${o.iperfSeconds} s`);
    for (let r = 0; r < o.redirectRounds; r++) {
      const order = beds.map((_, i) => beds[(i + r) % beds.length]).filter((b): b is Bed => b !== undefined);
      for (const bed of order) {
        checkInterrupted();
        for (const p of REDIRECT_PATHS) bed.connect[p].push(await connects(o, bed.routes[p].client, bed.routes[p].server));
        for (const p of ['out', 'direct'] as const) bed.persistent[p].push(...(await rr(o, bed.routes[p].client, bed.routes[p].server)));
        bed.iperf.push(await iperf(o, bed.routes.out.client, bed.routes.out.server));
        bed.iperfDirect.push(await iperf(o, bed.routes.direct.client, bed.routes.direct.server));
      }
      progress(`  round ${r + 1}/${o.redirectRounds} done`);
    }
    const results: RedirectResult[] = [];
    for (const bed of beds) {
      checkInterrupted();
      const ct = await bed.routes.out.client.exec('conntrack', ['-C'], { reject: false });
      const pooled = (p: RedirectPath): RedirectPathResult => ({
        connect: dist(bed.connect[p].flat()),
        roundP50: bed.connect[p].map((s) => dist(s).p50),
        persistent: dist(p === 'in' ? [] : bed.persistent[p]),
      });
      const median = (xs: number[]): number => dist(xs).p50;
      const summary = (xs: Iperf[]): Iperf => ({ gbps: median(xs.map((i) => i.gbps)), gib: median(xs.map((i) => i.gib)), cpuSPerGib: median(xs.map((i) => i.cpuSPerGib)) });
      results.push({
        mode: bed.mode,
        paths: { out: pooled('out'), in: pooled('in'), direct: pooled('direct') },
        iperf: { out: summary(bed.iperf), direct: summary(bed.iperfDirect) },
        iperfRounds: bed.iperf,
        conntrackEntries: Number(String(ct.stdout).trim()) || 0,
      });
    }
    return results;
  });
}

/** Target from the issue: ebpf connection setup at least 15% cheaper than iptables REDIRECT, without a throughput loss. */
export const EBPF_SETUP_SAVING = 0.15;

/** Connection setup as the issue measures it: connect() p50 through the backend (the direct column is the floor). */
const setupCost = (r: RedirectResult, p: 'out' | 'in'): number => r.paths[p].connect.p50;

export function reportRedirect(o: RedirectOpts, results: RedirectResult[], lines: string[]): void {
  lines.push(`### Redirection backends: ${results.map((r) => r.mode).join(' vs ')} (same run, ${o.redirectRounds} interleaved rounds; per round and path ${o.connects} connect() calls, ${o.rounds} 1 KiB round trips, iperf3 ${o.iperfSeconds} s)`);
  lines.push('');
  lines.push('out = enrolled client pod -> plain server pod on the other node (outbound redirection; the agent relays plain TCP, so the backend is the only difference); in = plain client -> enrolled server pod (inbound redirection to 15006); direct = the same testbed\'s plain pods, no agent. connect() is the handshake alone (a blocking Python client), which the redirection answers inside the pod: it is where the backends differ most.');
  lines.push('');
  lines.push('| backend | out connect() p50 / p99 µs | in connect() p50 / p99 µs | direct connect() p50 / p99 µs | out 1 KiB RR p50 / p99 µs | direct 1 KiB RR p50 / p99 µs | out iperf3 Gbit/s | out machine CPU s/GiB | direct Gbit/s (CPU s/GiB) | conntrack entries after |');
  lines.push('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    lines.push(
      `| ${r.mode} | ${pm(r.paths.out.connect)} | ${pm(r.paths.in.connect)} | ${pm(r.paths.direct.connect)} | ${pm(r.paths.out.persistent)} | ${pm(r.paths.direct.persistent)} | ${f2(r.iperf.out.gbps)} | ${f2(r.iperf.out.cpuSPerGib)} | ${f2(r.iperf.direct.gbps)} (${f2(r.iperf.direct.cpuSPerGib)}) | ${f0(r.conntrackEntries)} |`,
    );
  }
  lines.push('');
  lines.push(`Per-round out connect() p50 (µs), to show the spread: ${results.map((r) => `${r.mode} ${r.paths.out.roundP50.map(f0).join(' ')}`).join('; ')}. Per-round out Gbit/s: ${results.map((r) => `${r.mode} ${r.iperfRounds.map((i) => f2(i.gbps)).join(' ')}`).join('; ')}.`);
  lines.push('');
  const ipt = results.find((r) => r.mode === 'iptables');
  const ebpf = results.find((r) => r.mode === 'ebpf');
  if (ipt && ebpf) {
    const verdict = (p: 'out' | 'in'): string => {
      const saving = 1 - setupCost(ebpf, p) / setupCost(ipt, p);
      return `${p} ${f1(setupCost(ebpf, p))} vs ${f1(setupCost(ipt, p))} µs = ${(saving * 100).toFixed(0)}% cheaper (${ratio(setupCost(ebpf, p), setupCost(ipt, p))}) **${saving >= EBPF_SETUP_SAVING ? 'MET' : 'MISSED'}**`;
    };
    const tput = ebpf.iperf.out.gbps / ipt.iperf.out.gbps;
    lines.push(
      `Target, ebpf connect() p50 at least ${EBPF_SETUP_SAVING * 100}% cheaper than iptables REDIRECT: ${verdict('out')}; ${verdict('in')}. ` +
        `Throughput ebpf/iptables ${tput.toFixed(2)}x, CPU per GiB ${ratio(ebpf.iperf.out.cpuSPerGib, ipt.iperf.out.cpuSPerGib)} (no regression: **${tput >= 0.95 ? 'MET' : 'MISSED'}**, 5% noise allowed).`,
    );
    lines.push('');
  }
}
