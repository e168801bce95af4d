// 6. Inbound source preservation (issue 14): one 3-node testbed whose server nodes differ only in --preserve-source (node 1
// on, node 2 off); clients on node 0 call both servers turn by turn (round trip, connection, bulk burst), so the ratios
// on/off share every moment of the machine.
import type { RedirectMode, TestbedPod } from '../../test/testbed/index.js';
import { pinAgent } from './cpu.js';
import { pooled, RR, RR_PORT, runBulkInterleaved, runRr, runRrInterleaved, SINK_PORT, type DatapathOpts, type Route, type RrResult, type RrSamples } from './datapath.js';
import { AMBIENT, checkInterrupted, progress, withTestbeds } from './run.js';
import { burstThroughput, f1, f2, medianCi, pairedRatios, pm, ratioCi, verdictLine } from './stats.js';

export interface SourceOpts extends Pick<DatapathOpts, 'rounds' | 'conns' | 'rrBlocks'> {
  /** The backend of the testbed. */
  sourceMode: RedirectMode;
  /** A control run: node 2's server keeps preservation on too, so any on/off difference is the set-up's own. */
  sourceControl: boolean;
  /** MiB of one bulk burst. */
  sourceMib: number;
  /** The preserving server on node 2 and the other on node 1: whether a difference follows the setting or the node. */
  sourceSwap: boolean;
}

type Setting = 'on' | 'off';
type Client = 'mesh' | 'plain';
const SETTINGS: readonly Setting[] = ['on', 'off'];
/** The node of each setting's server (node 0 holds the clients); --source-swap trades them. */
const nodesOf = (swap: boolean): Record<Setting, number> => (swap ? { on: 2, off: 1 } : { on: 1, off: 2 });
/** Timed bulk bursts per setting and block (after 2 untimed ones; their size is --source-mib). */
const BULK_BURSTS = 12;

/** Node 0 (the clients) on CPU 0, the two server nodes on CPU 1. */
const cpuOf = (node: number): number => (node === 0 ? 0 : 1);
const pinned = (pod: TestbedPod, cmd: string, args: string[]): [string, string[]] => ['taskset', ['-c', String(cpuOf(pod.node.index)), cmd, ...args]];
const PIN = { pin: true };

export interface SourceResult {
  mode: RedirectMode;
  /** Per setting: RR of a mesh client (HBONE into 15008) and a plain client (15006). */
  rr: Record<Setting, Record<Client, RrResult>>;
  /** Bulk Gbit/s per client and block: its bursts' bits over their time (burstThroughput). */
  bulk: Record<Setting, Record<Client, number[]>>;
  /** Every timed burst, per client and block (Gbit/s). */
  bulkBursts: Record<Setting, Record<Client, number[][]>>;
  /**
   * Each server pod's TCP sockets on the sink port (`ss -tni`: MSS, window, cwnd of the agent's upstream end and the app's
   * end) while each client's bulk connection is open, after the blocks: which path carried the slower server's bytes.
   */
  sinkSockets: Record<Setting, Record<Client, string>>;
  /** What each server's app saw as its peer (proof the setting took effect). */
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
  const NODE = nodesOf(o.sourceSwap);
  progress(`source preservation [${o.sourceMode}]: a 3-node testbed, servers on node ${NODE.on} (--preserve-source true) and node ${NODE.off} (${o.sourceControl ? 'true: a control run' : 'false'})`);
  const tbOpts = { nodes: 3, redirectMode: o.sourceMode, agentLogLevel: 'info', agentArgs: ['--preserve-source', 'true'], nodeAgentArgs: o.sourceControl ? {} : { [NODE.off]: ['--preserve-source', 'false'] } };
  return withTestbeds([tbOpts], async ([tb]) => {
    if (tb === undefined) throw new Error('testbed missing');
    await tb.setNamespace('mesh', AMBIENT);
    await tb.setNamespace('plain', {});
    const pods = await tb.addPods([
      { node: 0, namespace: 'mesh', name: 'client' },
      { node: 0, namespace: 'plain', name: 'client' },
      { node: NODE.on, namespace: 'mesh', name: 'server-on' },
      { node: NODE.off, namespace: 'mesh', name: 'server-off' },
    ]);
    const [meshClient, plainClient, onServer, offServer] = pods;
    if (!meshClient || !plainClient || !onServer || !offServer) throw new Error('pods missing');
    const servers: Record<Setting, TestbedPod> = { on: onServer, off: offServer };
    // No TCP metrics cache: a connection's close otherwise saves its ssthresh per destination, and every later
    // connection to that server starts from it, so one loss could hold one server's bulk bursts low for the whole run
    // (plain bulk on/off read 0.80x in one run and 1.52x in another, one server at ~5 Gbit/s for most of the run).
    for (const pod of pods) await pod.exec('sysctl', ['-qw', 'net.ipv4.tcp_no_metrics_save=1']);
    // Always pinned, the clients' node on one CPU and both servers' nodes on the other: unpinned, where the scheduler puts
    // each server's processes (beside the client's or not) made two identical servers 30-45 % apart in RR.
    for (const n of [0, 1, 2]) pinAgent(tb.agent(n), cpuOf(n));
    const result: SourceResult = { mode: o.sourceMode, rr: {} as SourceResult['rr'], bulk: { on: { mesh: [], plain: [] }, off: { mesh: [], plain: [] } }, bulkBursts: { on: { mesh: [], plain: [] }, off: { mesh: [], plain: [] } }, sinkSockets: { on: { mesh: '', plain: '' }, off: { mesh: '', plain: '' } }, peerSeen: {} as SourceResult['peerSeen'] };
    for (const setting of SETTINGS) {
      const server = servers[setting];
      void server.spawn(...pinned(server, process.execPath, [RR, 'server', '--port', String(RR_PORT), '--sink-port', String(SINK_PORT), '--chunk-mib', String(o.sourceMib)]), { reject: false });
      await server.waitForPort(RR_PORT);
      await server.waitForPort(SINK_PORT);
      const route: Route = { client: meshClient, server, host: server.ip, rrPort: RR_PORT, iperfPort: 5201 };
      const seen = await peerSeen(route);
      result.peerSeen[setting] = { mesh: seen, meshClientIp: meshClient.ip, serverIp: server.ip };
      const want = setting === 'on' || o.sourceControl ? meshClient.ip : server.ip;
      if (seen !== want) throw new Error(`--preserve-source ${setting}: the server saw ${seen || 'nothing'}, expected ${want}: the comparison would be meaningless`);
      for (const client of [meshClient, plainClient]) await runRr({ ...o, ...PIN }, { ...route, client }, { rounds: 100, conns: 5 }); // untimed warm-up
    }
    const hosts = [servers.on.ip, servers.off.ip];
    const blocks: Record<Setting, Record<Client, RrSamples[]>> = { on: { mesh: [], plain: [] }, off: { mesh: [], plain: [] } };
    for (let b = 0; b < o.rrBlocks; b++) {
      checkInterrupted();
      for (const [c, client] of [['mesh', meshClient], ['plain', plainClient]] as const) {
        const [on, off] = await runRrInterleaved({ ...o, ...PIN }, { client, server: servers.on, host: servers.on.ip, rrPort: RR_PORT, iperfPort: 5201 }, hosts);
        if (on === undefined || off === undefined) throw new Error('rr.mjs gave no samples');
        blocks.on[c].push(on);
        blocks.off[c].push(off);
        const [gOn, gOff] = await runBulkInterleaved(PIN, { client, server: servers.on, host: servers.on.ip, rrPort: RR_PORT, iperfPort: 5201 }, hosts, BULK_BURSTS, o.sourceMib);
        if (gOn === undefined || gOff === undefined) throw new Error('rr.mjs bulk gave no samples');
        result.bulk.on[c].push(burstThroughput(gOn));
        result.bulk.off[c].push(burstThroughput(gOff));
        result.bulkBursts.on[c].push(gOn);
        result.bulkBursts.off[c].push(gOff);
      }
    }
    for (const s of SETTINGS) result.rr[s] = { mesh: pooled(blocks[s].mesh), plain: pooled(blocks[s].plain) };
    for (const [c, client] of [['mesh', meshClient], ['plain', plainClient]] as const) {
      const bulk = runBulkInterleaved(PIN, { client, server: servers.on, host: servers.on.ip, rrPort: RR_PORT, iperfPort: 5201 }, hosts, 60, o.sourceMib);
      await new Promise((r) => setTimeout(r, 700));
      for (const setting of SETTINGS) {
        const ss = await servers[setting].exec('ss', ['-Htni', 'state', 'established', `( sport = :${SINK_PORT} or dport = :${SINK_PORT} )`], { reject: false });
        result.sinkSockets[setting][c] = String(ss.stdout);
      }
      await bulk;
    }
    return result;
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? (s[m] ?? Number.NaN) : ((s[m - 1] ?? Number.NaN) + (s[m] ?? Number.NaN)) / 2;
};

export function reportSource(o: SourceOpts, r: SourceResult, lines: string[]): void {
  lines.push(`### Inbound source preservation on vs off [${r.mode}]${o.sourceControl ? ` — CONTROL RUN: both servers preserve the source; "off" is node ${nodesOf(o.sourceSwap).off} with it on` : ''} (same run, ${o.rrBlocks} blocks of ${o.rounds} 1 KiB round trips, ${o.conns} new connections and ${BULK_BURSTS} bulk bursts of ${o.sourceMib} MiB per setting, the settings in turn one by one)`);
  lines.push('');
  const node = nodesOf(o.sourceSwap);
  lines.push(`Enrolled servers on node ${node.on} (--preserve-source true) and node ${node.off} (false), alike otherwise; "mesh" = an enrolled client on node 0 (HBONE into 15008), "plain" = a non-mesh client on node 0 (15006, PERMISSIVE); each client calls both servers turn by turn. The servers' apps saw ${r.peerSeen.on.mesh} (the client) with preservation on and ${r.peerSeen.off.mesh} (itself) with it off.`);
  lines.push('');
  lines.push('| client | setting | 1 KiB RR p50 / p99 µs | new connection p50 / p99 µs | bulk Gbit/s (median of blocks) |');
  lines.push('|---|---|---:|---:|---:|');
  for (const c of ['mesh', 'plain'] as const) {
    for (const s of SETTINGS) lines.push(`| ${c} | ${s} | ${pm(r.rr[s][c].persistent)} | ${pm(r.rr[s][c].newConnection)} | ${f2(median(r.bulk[s][c]))} |`);
  }
  lines.push('');
  // On over off block by block (each block holds both settings, turn by turn), with the 95 % interval of their median.
  const paired = (pick: (s: Setting) => number[]): ReturnType<typeof medianCi> => medianCi(pairedRatios(pick('off'), pick('on')));
  const figures = [
    { name: 'mesh RR p50', ci: paired((s) => r.rr[s].mesh.blockP50.persistent) },
    { name: 'mesh new connection p50', ci: paired((s) => r.rr[s].mesh.blockP50.newConnection) },
    { name: 'plain RR p50', ci: paired((s) => r.rr[s].plain.blockP50.persistent) },
    { name: 'plain new connection p50', ci: paired((s) => r.rr[s].plain.blockP50.newConnection) },
    { name: 'mesh throughput', ci: paired((s) => r.bulk[s].mesh) },
    { name: 'plain throughput', ci: paired((s) => r.bulk[s].plain) },
  ];
  lines.push(`On/off block by block, median [95 % interval]: ${figures.map((x) => `${x.name} ${ratioCi(x.ci)}`).join(', ')}. Per-block mesh RR p50 (µs): on ${r.rr.on.mesh.blockP50.persistent.map(f1).join(' ')}; off ${r.rr.off.mesh.blockP50.persistent.map(f1).join(' ')}.`);
  lines.push(verdictLine(`on and off no more than ${SOURCE_RATIO_LIMIT * 100} % apart`, figures, SOURCE_RATIO_LIMIT, '--rr-blocks'));
  const mss = (ss: string): string => [...ss.matchAll(/\bmss:(\d+)/g)].map((m) => m[1]).join('/') || 'none';
  lines.push(`MSS of the server pods' sockets on the sink port during a last bulk run (agent's upstream end and app's end; full \`ss -tni\` in the JSON): ${SETTINGS.flatMap((st) => (['mesh', 'plain'] as const).map((c) => `${c} ${st} ${mss(r.sinkSockets[st][c])}`)).join(', ')}.`);
  lines.push('');
}
