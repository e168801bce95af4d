// Benchmark: CNI ADD latency of the chain with ambient-cni vs the bridge plugin alone, pod-to-pod throughput / latency
// through HBONE vs direct TCP vs a stunnel mTLS pair, redirect backends, Services (ClusterIP vs pod IP), IPv6 vs IPv4 and
// re-adoption after kill -9; ratios to in-run baselines and target verdicts.
// This entry owns the options, interrupts, the order of the runs and the report around the tables; scripts/bench/ the rest.
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { AGENT_MAIN, listNetns, type RedirectMode, REPO_ROOT } from '../test/testbed/index.js';
import { type AddOpts, addStats, benchAdd, type ChainResult } from './bench/add-latency.js';
import { benchDatapath, type DatapathOpts, type DatapathResult } from './bench/datapath.js';
import { ADDED_P50_US, BUDGET_MS, type BudgetVerdict, type DatapathVerdict, reportAdd, reportDatapath, THROUGHPUT_VS_STUNNEL } from './bench/report.js';
import { benchRedirect, type RedirectOpts, type RedirectResult, reportRedirect } from './bench/redirect.js';
import { benchServices, reportServices, type ServicesOpts, type ServicesResult } from './bench/services.js';
import { benchScale, reportScale, type ScaleOpts, type ScaleResult } from './bench/scale.js';
import { benchSourceRss, reportSourceRss, type SourceRssResult } from './bench/source-rss.js';
import { benchTakeover, reportTakeover, type TakeoverOpts, type TakeoverResult } from './bench/takeover.js';
import { benchSource, reportSource, type SourceOpts, type SourceResult } from './bench/source.js';
import { benchChurn, type ChurnOpts, type ChurnResult, reportChurn } from './bench/churn.js';
import { benchIpv6, type Ipv6Opts, type Ipv6Result, reportIpv6 } from './bench/ipv6.js';
import { benchConn, type ConnOpts, type ConnResult, reportConn } from './bench/conn.js';
import { benchReadopt, READOPT_MAX_PODS, type ReadoptOpts, type ReadoptResult, reportReadopt } from './bench/readopt.js';
import { createdIds, Interrupted, noteInterrupt, wasInterrupted } from './bench/run.js';
import { dist } from './bench/stats.js';

// ---------------------------------------------------------------------------------------------------------------
// Options

const USAGE = `usage: bash scripts/bench.sh [options]
  --modes LIST         redirection backends for the enrolled chain and the data path (default iptables,nftables)
  --datapath-modes L   backends for the data path only (default: --modes); HBONE is the same for both, so one is
                       enough when only HBONE is compared (about 30 s less per backend left out)
  --pods N             pods per chain for the sequential ADD measurement (default 50)
  --warmup N           warm-up ADDs per chain, not counted (default 2)
  --concurrency N      also add N-at-a-time batches of --pods pods per chain; 0 skips it (default 10)
  --iperf-seconds S    iperf3 duration per path (default 5)
  --rounds N           1 KiB round trips on one connection, per block (default 2000)
  --conns N            new connections, each timed to its first round trip, per block (default 200)
  --rr-blocks N        request/response blocks per path, the order of direct/mesh/stunnel rotating, pooled (default 3)
  --no-pin             let the scheduler place data-path processes (default: node 0's client pod and agent on CPU 0,
                       node 1's server pod and agent on CPU 1, like two 1-core machines)
  --agent-cpu-prof DIR data path agents run under node --cpu-prof, writing .cpuprofile files into DIR/<backend>/
                       (the profiler slows the agents: read such a run for the profile, not for the numbers)
  --agent-node-flags F node flags for the data path and churn agents in place of the agent's own (--single-threaded-gc
                       --max-semi-space-size=4 --v8-pool-size=1, test/testbed/repo.ts), space-separated; pass them as --agent-node-flags=...
  --redirect-modes L   backends compared side by side for the redirection cost (default iptables,nftables,ebpf)
  --redirect-rounds N  interleaved rounds of that comparison (default 6)
  --connects N         connect() calls per path per round in that comparison (default 400)
  --table-services N   Services in the in-process lookup table of the services comparison (default 5000)
  --scale-sizes LIST   remote pods in the scale part's directories (default 10000,50000)
  --scale-updates N    one-pod changes per scale run (default 30)
  --source-mode M      backend of the source preservation comparison, on vs off (default iptables)
  --source-control     that part with preservation on in both servers: what the comparison reads when nothing differs
  --source-swap        that part with the preserving server on node 2 and the other on node 1 (default: 1 and 2)
  --source-mib N       one bulk burst in that part, MiB (default 8); 12 per setting and client in each block
  --takeover-modes L   backends of the take-over part (default iptables,nftables,ebpf)
  --takeover-steady S  seconds of steady state measured before the take-overs (default 8)
  --churn-modes L      backends of the pod-churn part (default iptables)
  --churn-cycles N     ADD-then-DEL cycles of the pod-churn part (default 10)
  --churn-pods N       pods per cycle (default 110)
  --churn-concurrency N  ADDs / DELs at a time in the pod-churn part (default 32)
  --ipv6-modes L       backends of the IPv6 vs IPv4 part, a dual-stack testbed each (default iptables,nftables;
                       ebpf works too)
  --ipv6-blocks N      interleaved blocks per family in that part, each --rounds round trips, --conns new connections
                       and 12 bursts of --ipv6-mib MiB one way per family, all interleaved one by one (default 4)
  --ipv6-mib N         one bulk burst in that part, MiB one way; 12 a family per block, the families in turn (default 8)
  --readopt-modes L    backends of the re-adoption part: N enrolled pods on one node, the agent killed -9 and started
                       again, start to ready timed against the same agent with 0 pods (default iptables)
  --readopt-pods N     enrolled pods in that part, at most ${READOPT_MAX_PODS} (default 250, the goal's size)
  --readopt-reps N     kill -9 + start repetitions, with 0 pods and with N pods each (default 3)
  --conn-mode M        backend of the connection-cost part (default iptables): new connections one at a time and from
                       16 concurrent clients, mesh vs direct, and the agents' CPU per connection and per 1 KiB request
  --conn-blocks N      blocks per path in that part (default 4; about 17 s each)
  --only WHAT          add | datapath | redirect | services | scale | source | takeover | churn | ipv6 | readopt | conn
                       (default: all eleven)
  --out FILE           raw results (default .bench/results.json)`;

const ONLY = ['add', 'datapath', 'redirect', 'services', 'scale', 'source', 'takeover', 'churn', 'ipv6', 'readopt', 'conn'] as const;

interface Opts extends AddOpts, DatapathOpts, RedirectOpts, ServicesOpts, ScaleOpts, SourceOpts, TakeoverOpts, ChurnOpts, Ipv6Opts, ReadoptOpts, ConnOpts {
  datapathModes: RedirectMode[];
  redirectModes: RedirectMode[];
  agentCpuProf: string | undefined;
  agentNodeFlags: string[];
  only: (typeof ONLY)[number] | undefined;
  out: string;
}

function parseOpts(argv: string[]): Opts {
  if (argv.some((a) => a === '--data-paths' || a.startsWith('--data-paths='))) {
    throw new UsageError('--data-paths was removed: the agents carry HBONE on the native data path only (its ratios are against direct TCP and the stunnel pair of the same run)');
  }
  const { values } = parseArgs({
    args: argv,
    options: {
      modes: { type: 'string', default: 'iptables,nftables' },
      'datapath-modes': { type: 'string' },
      'redirect-modes': { type: 'string', default: 'iptables,nftables,ebpf' },
      'redirect-rounds': { type: 'string', default: '6' },
      connects: { type: 'string', default: '400' },
      'agent-cpu-prof': { type: 'string' },
      'agent-node-flags': { type: 'string', default: '' },
      pods: { type: 'string', default: '50' },
      warmup: { type: 'string', default: '2' },
      concurrency: { type: 'string', default: '10' },
      'iperf-seconds': { type: 'string', default: '5' },
      rounds: { type: 'string', default: '2000' },
      conns: { type: 'string', default: '200' },
      'rr-blocks': { type: 'string', default: '3' },
      only: { type: 'string' },
      'source-mode': { type: 'string', default: 'iptables' },
      'source-control': { type: 'boolean', default: false },
      'source-swap': { type: 'boolean', default: false },
      'source-mib': { type: 'string', default: '8' },
      'table-services': { type: 'string', default: '5000' },
      'scale-sizes': { type: 'string', default: '10000,50000' },
      'takeover-modes': { type: 'string', default: 'iptables,nftables,ebpf' },
      'takeover-steady': { type: 'string', default: '8' },
      'scale-updates': { type: 'string', default: '30' },
      'churn-modes': { type: 'string', default: 'iptables' },
      'churn-cycles': { type: 'string', default: '10' },
      'churn-pods': { type: 'string', default: '110' },
      'churn-concurrency': { type: 'string', default: '32' },
      'ipv6-modes': { type: 'string', default: 'iptables,nftables' },
      'ipv6-blocks': { type: 'string', default: '4' },
      'ipv6-mib': { type: 'string', default: '8' },
      'readopt-modes': { type: 'string', default: 'iptables' },
      'readopt-pods': { type: 'string', default: '250' },
      'readopt-reps': { type: 'string', default: '3' },
      'conn-mode': { type: 'string', default: 'iptables' },
      'conn-blocks': { type: 'string', default: '4' },
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
  const atMost = (name: string, n: number, max: number): number => {
    if (n > max) throw new UsageError(`--${name} must be at most ${max}, got ${n}`);
    return n;
  };
  const backends = (name: string, v: string): RedirectMode[] => {
    const list = v.split(',').map((m) => m.trim()).filter((m) => m !== '');
    for (const m of list) if (m !== 'iptables' && m !== 'nftables' && m !== 'ebpf') throw new UsageError(`--${name}: unknown backend ${m}`);
    if (list.length === 0) throw new UsageError(`--${name}: give at least one backend`);
    return [...new Set(list)] as RedirectMode[];
  };
  const modes = backends('modes', values.modes);
  const datapathModes = values['datapath-modes'] === undefined ? modes : backends('datapath-modes', values['datapath-modes']);
  const prof = values['agent-cpu-prof'] === undefined ? undefined : resolve(values['agent-cpu-prof']);
  const nodeFlags = values['agent-node-flags'].split(/\s+/).filter((f) => f !== '');
  for (const f of nodeFlags) if (!f.startsWith('--')) throw new UsageError(`--agent-node-flags: ${f} is not a node flag`);
  const only = values.only;
  const isOnly = (v: string): v is (typeof ONLY)[number] => (ONLY as readonly string[]).includes(v);
  if (only !== undefined && !isOnly(only)) throw new UsageError(`--only must be one of ${ONLY.join(', ')}, got ${only}`);
  const sourceMode = backends('source-mode', values['source-mode']);
  if (sourceMode.length !== 1) throw new UsageError('--source-mode: give one backend');
  const ipv6Modes = backends('ipv6-modes', values['ipv6-modes']);
  const connMode = backends('conn-mode', values['conn-mode']);
  if (connMode.length !== 1) throw new UsageError('--conn-mode: give one backend');
  return {
    modes,
    datapathModes,
    redirectModes: backends('redirect-modes', values['redirect-modes']),
    redirectRounds: int('redirect-rounds', values['redirect-rounds'], 1),
    connects: int('connects', values.connects, 10),
    agentCpuProf: prof,
    agentNodeFlags: nodeFlags,
    agentCommand:
      prof === undefined && nodeFlags.length === 0
        ? undefined
        : (mode) => [process.execPath, ...nodeFlags, ...(prof === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${join(prof, mode)}`]), AGENT_MAIN],
    pods: int('pods', values.pods, 2),
    warmup: int('warmup', values.warmup, 0),
    concurrency: int('concurrency', values.concurrency, 0),
    iperfSeconds: int('iperf-seconds', values['iperf-seconds'], 1),
    rounds: int('rounds', values.rounds, 10),
    conns: int('conns', values.conns, 1),
    rrBlocks: int('rr-blocks', values['rr-blocks'], 1),
    tableServices: int('table-services', values['table-services'], 1),
    scaleSizes: values['scale-sizes'].split(',').map((v) => int('scale-sizes', v.trim(), 101)),
    scaleUpdates: int('scale-updates', values['scale-updates'], 1),
    takeoverModes: backends('takeover-modes', values['takeover-modes']),
    steadySeconds: int('takeover-steady', values['takeover-steady'], 2),
    churnModes: backends('churn-modes', values['churn-modes']),
    churnCycles: int('churn-cycles', values['churn-cycles'], 1),
    churnPods: int('churn-pods', values['churn-pods'], 1),
    churnConcurrency: int('churn-concurrency', values['churn-concurrency'], 1),
    ipv6Modes,
    ipv6Blocks: int('ipv6-blocks', values['ipv6-blocks'], 1),
    ipv6Mib: int('ipv6-mib', values['ipv6-mib'], 1),
    readoptModes: backends('readopt-modes', values['readopt-modes']),
    readoptPods: atMost('readopt-pods', int('readopt-pods', values['readopt-pods'], 1), READOPT_MAX_PODS),
    readoptReps: int('readopt-reps', values['readopt-reps'], 1),
    connMode: connMode[0] as RedirectMode,
    connBlocks: int('conn-blocks', values['conn-blocks'], 1),
    pin: !values['no-pin'] && os.availableParallelism() >= 2,
    only,
    sourceMode: sourceMode[0] as RedirectMode,
    sourceControl: values['source-control'] ?? false,
    sourceSwap: values['source-swap'] ?? false,
    sourceMib: int('source-mib', values['source-mib'], 1),
    out: values.out,
  };
}

class UsageError extends Error {}

// ---------------------------------------------------------------------------------------------------------------
// Interrupts: the testbed library already destroys live testbeds on SIGINT/SIGTERM/SIGHUP and then re-raises the
// signal. We only stop creating new things: a once-listener sets the flag in scripts/bench/run.ts that every step checks.
for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(s, () => {
    noteInterrupt(s);
    process.stderr.write(`\nbench: ${s}, tearing down the testbeds...\n`);
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Main

interface Machine {
  date: string;
  nproc: number;
  cpu: string;
  kernel: string;
  node: string;
  loadavg: number[];
}

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
  let redirect: RedirectResult[] = [];
  let services: ServicesResult | undefined;
  let scale: ScaleResult | undefined;
  let sourceRss: SourceRssResult | undefined;
  let takeover: TakeoverResult[] = [];
  let source: SourceResult | undefined;
  let churn: ChurnResult[] = [];
  let ipv6: Ipv6Result[] = [];
  let readopt: ReadoptResult[] = [];
  const conn: ConnResult[] = [];
  try {
    if (o.only === undefined || o.only === 'add') chains = await benchAdd(o);
    if (o.only === undefined || o.only === 'datapath') for (const mode of o.datapathModes) datapath.push(await benchDatapath(o, mode));
    if (o.only === undefined || o.only === 'redirect') redirect = await benchRedirect(o, o.redirectModes);
    if (o.only === undefined || o.only === 'services') services = await benchServices(o);
    if (o.only === undefined || o.only === 'scale') scale = await benchScale(o);
    if (o.only === undefined || o.only === 'scale') sourceRss = await benchSourceRss(3);
    if (o.only === undefined || o.only === 'takeover') takeover = await benchTakeover(o);
    if (o.only === undefined || o.only === 'source') source = await benchSource(o);
    if (o.only === undefined || o.only === 'churn') churn = await benchChurn(o);
    if (o.only === undefined || o.only === 'ipv6') ipv6 = await benchIpv6(o);
    if (o.only === undefined || o.only === 'readopt') readopt = await benchReadopt(o);
    if (o.only === undefined || o.only === 'conn') conn.push(await benchConn(o));
  } catch (err) {
    if (err instanceof Interrupted || wasInterrupted()) {
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
  let targets: DatapathVerdict[] = [];
  if (datapath.length > 0 && (o.agentNodeFlags.length > 0 || o.agentCpuProf !== undefined)) {
    lines.push(`**Data path agents ran as \`node ${[...o.agentNodeFlags, ...(o.agentCpuProf === undefined ? [] : ['--cpu-prof'])].join(' ')}\`, not the default command.**`, '');
  }
  if (datapath.length > 0) targets = reportDatapath(o, datapath, lines);
  if (redirect.length > 0) reportRedirect(o, redirect, lines);
  if (services) reportServices(o, services, lines);
  if (scale) reportScale(o, scale, lines);
  if (sourceRss) reportSourceRss(sourceRss, lines);
  if (takeover.length > 0) reportTakeover(takeover, lines);
  if (source) reportSource(o, source, lines);
  if (churn.length > 0) reportChurn(churn, lines);
  if (ipv6.length > 0) reportIpv6(o, ipv6, lines);
  if (readopt.length > 0) reportReadopt(readopt, lines);
  if (conn.length > 0) reportConn(conn, lines);
  lines.push(`Timings are from this run only and are noisy on a shared 2-core VM: compare ratios, not absolute numbers.${chains.length > 0 ? ` p99 of ${o.pods} ADD samples lies between the two slowest.` : ''}`);
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
    redirect,
    services,
    scale,
    sourceRss,
    takeover,
    source,
    churn,
    ipv6,
    readopt,
    conn,
    targets: { throughputVsStunnel: THROUGHPUT_VS_STUNNEL, addedP50Us: ADDED_P50_US, verdicts: targets },
  };
  writeFileSync(o.out, `${JSON.stringify(raw, null, 2)}\n`);
  process.stderr.write(`bench: raw numbers in ${o.out}\n`);
  if (o.agentCpuProf !== undefined) process.stderr.write(`bench: agent CPU profiles in ${o.agentCpuProf}/<backend>/ (open in Chrome DevTools or speedscope)\n`);

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
