// 6. Inbound source preservation (issue 14): the same traffic into an enrolled server with --preserve-source on and
// off, two testbeds alive at once and measured in interleaved blocks; the ratios on/off are what count.
import type { RedirectMode } from '../../test/testbed/index.js';
import { onCpu, pinAgent } from './cpu.js';
import { meshAndPlainPods, pooled, RR, RR_PORT, runIperf, runRr, type DatapathOpts, type IperfResult, type Route, type RrResult, type RrSamples } from './datapath.js';
import { checkInterrupted, progress, withTestbeds } from './run.js';
import { f1, f2, medianCi, pairedRatios, pm, ratioCi, verdictLine } from './stats.js';

export interface SourceOpts extends Pick<DatapathOpts, 'rounds' | 'conns' | 'rrBlocks' | 'pin' | 'iperfSeconds'> {
  /** The backend both testbeds use. */
  sourceMode: RedirectMode;
}

type Setting = 'on' | 'off';
type Client = 'mesh' | 'plain';
const SETTINGS: readonly Setting[] = ['on', 'off'];

export interface SourceResult {
  mode: RedirectMode;
  /** Per setting: RR of a mesh client (HBONE into 15008) and a plain client (15006), iperf3 of the mesh client. */
  rr: Record<Setting, Record<Client, RrResult>>;
  iperf: Record<Setting, IperfResult[]>;
  /** What the server app saw as its peer in each testbed (proof the setting took effect). */
  peerSeen: Record<Setting, { mesh: string; meshClientIp: string; serverIp: string }>;
}

/** Goal from the issue: preservation on vs off no more than this far apart. */
export const SOURCE_RATIO_LIMIT = 0.05;

/** The peer address a one-line echo in `server` reports for a connection from `client` to r.host (ncat, then closed). */
export async function peerSeen(r: Route): Promise<string> {
  const port = 7100;
  const srv = r.server.spawn('ncat', ['-l', String(port), '--sh-exec', 'echo "$NCAT_REMOTE_ADDR"'], { reject: false, timeout: 20_000 });
  await r.server.waitForPort(port);
  const res = await r.client.exec('ncat', ['--recv-only', '-w', '5', r.host, String(port)], { reject: false, timeout: 15_000 });
  await srv;
  return String(res.stdout).trim();
}

export async function benchSource(o: SourceOpts): Promise<SourceResult> {
  progress(`source preservation [${o.sourceMode}]: two 2-node testbeds, --preserve-source true and false`);
  const base = { nodes: 2, redirectMode: o.sourceMode, agentLogLevel: 'info' };
  return withTestbeds([{ ...base, agentArgs: ['--preserve-source', 'true'] }, { ...base, agentArgs: ['--preserve-source', 'false'] }], async (tbs) => {
    const routes = {} as Record<Setting, Record<Client, Route>>;
    const result: SourceResult = { mode: o.sourceMode, rr: {} as SourceResult['rr'], iperf: { on: [], off: [] }, peerSeen: {} as SourceResult['peerSeen'] };
    for (const [i, setting] of SETTINGS.entries()) {
      const tb = tbs[i];
      if (tb === undefined) throw new Error('testbed missing');
      const { meshClient, meshServer, plainClient } = await meshAndPlainPods(tb);
      if (o.pin) for (const n of [0, 1]) pinAgent(tb.agent(n), n);
      void meshServer.spawn(...onCpu(o, meshServer, process.execPath, [RR, 'server', '--port', String(RR_PORT)]), { reject: false });
      await meshServer.waitForPort(RR_PORT);
      routes[setting] = {
        mesh: { client: meshClient, server: meshServer, host: meshServer.ip, rrPort: RR_PORT, iperfPort: 5201 },
        plain: { client: plainClient, server: meshServer, host: meshServer.ip, rrPort: RR_PORT, iperfPort: 5201 },
      };
      const seen = await peerSeen(routes[setting].mesh);
      result.peerSeen[setting] = { mesh: seen, meshClientIp: meshClient.ip, serverIp: meshServer.ip };
      const want = setting === 'on' ? meshClient.ip : meshServer.ip;
      if (seen !== want) throw new Error(`--preserve-source ${setting}: the server saw ${seen || 'nothing'}, expected ${want}: the comparison would be meaningless`);
      for (const c of ['mesh', 'plain'] as const) await runRr(o, routes[setting][c], { rounds: 100, conns: 5 }); // untimed warm-up
    }
    const blocks: Record<Setting, Record<Client, RrSamples[]>> = { on: { mesh: [], plain: [] }, off: { mesh: [], plain: [] } };
    for (let b = 0; b < o.rrBlocks; b++) {
      for (const setting of b % 2 === 0 ? SETTINGS : [...SETTINGS].reverse()) {
        checkInterrupted();
        for (const c of ['mesh', 'plain'] as const) blocks[setting][c].push(await runRr(o, routes[setting][c]));
        const tb = tbs[SETTINGS.indexOf(setting)];
        if (tb) result.iperf[setting].push(await runIperf(o as DatapathOpts, routes[setting].mesh, [tb.agent(0), tb.agent(1)], []));
      }
    }
    for (const s of SETTINGS) result.rr[s] = { mesh: pooled(blocks[s].mesh), plain: pooled(blocks[s].plain) };
    return result;
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? Number.NaN) : ((s[m - 1] ?? Number.NaN) + (s[m] ?? Number.NaN)) / 2;
};

export function reportSource(o: SourceOpts, r: SourceResult, lines: string[]): void {
  lines.push(`### Inbound source preservation on vs off [${r.mode}] (same run, ${o.rrBlocks} interleaved blocks of ${o.rounds} 1 KiB round trips, ${o.conns} new connections and ${o.iperfSeconds} s of iperf3 each)`);
  lines.push('');
  lines.push(`Server on node 1 enrolled; "mesh" = an enrolled client on node 0 (HBONE into 15008), "plain" = a non-mesh client on node 0 (15006, PERMISSIVE). The server's app saw ${r.peerSeen.on.mesh} (the client) with preservation on and ${r.peerSeen.off.mesh} (itself) with it off.`);
  lines.push('');
  lines.push('| client | setting | 1 KiB RR p50 / p99 µs | new connection p50 / p99 µs | iperf3 Gbit/s (median) |');
  lines.push('|---|---|---:|---:|---:|');
  const gbps = (s: Setting): number => median(r.iperf[s].map((i) => i.gbps));
  for (const c of ['mesh', 'plain'] as const) {
    for (const s of SETTINGS) lines.push(`| ${c} | ${s} | ${pm(r.rr[s][c].persistent)} | ${pm(r.rr[s][c].newConnection)} | ${c === 'mesh' ? f2(gbps(s)) : '–'} |`);
  }
  lines.push('');
  // On over off block by block (each "on" block ran right before or after its "off" one), with the 95 % interval of their median.
  const paired = (pick: (s: Setting) => number[]): ReturnType<typeof medianCi> => medianCi(pairedRatios(pick('off'), pick('on')));
  const figures = [
    { name: 'mesh RR p50', ci: paired((s) => r.rr[s].mesh.blockP50.persistent) },
    { name: 'mesh new connection p50', ci: paired((s) => r.rr[s].mesh.blockP50.newConnection) },
    { name: 'plain RR p50', ci: paired((s) => r.rr[s].plain.blockP50.persistent) },
    { name: 'plain new connection p50', ci: paired((s) => r.rr[s].plain.blockP50.newConnection) },
    { name: 'mesh throughput', ci: paired((s) => r.iperf[s].map((i) => i.gbps)) },
  ];
  lines.push(`On/off block by block, median [95 % interval]: ${figures.map((x) => `${x.name} ${ratioCi(x.ci)}`).join(', ')}. Per-block mesh RR p50 (µs): on ${r.rr.on.mesh.blockP50.persistent.map(f1).join(' ')}; off ${r.rr.off.mesh.blockP50.persistent.map(f1).join(' ')}.`);
  lines.push(verdictLine(`on and off no more than ${SOURCE_RATIO_LIMIT * 100} % apart`, figures, SOURCE_RATIO_LIMIT, '--rr-blocks'));
  lines.push('');
}
