// Benchmark: CNI ADD latency of the chain with ambient-cni vs the bridge plugin alone, and throughput / request-response
// latency through the in-pod redirection vs direct pod-to-pod, on the simulated cluster. Prints ratios to an in-run baseline; never asserts timings.
// This entry owns the options, interrupts, the order of the runs and the report around the tables; scripts/bench/ the rest.
import { mkdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { listNetns, type RedirectMode, REPO_ROOT } from '../test/testbed/index.js';
import { type AddOpts, addStats, benchAdd, type ChainResult } from './bench/add-latency.js';
import { benchDatapath, type DatapathOpts, type DatapathResult } from './bench/datapath.js';
import { BUDGET_MS, type BudgetVerdict, reportAdd, reportDatapath } from './bench/report.js';
import { createdIds, Interrupted, noteInterrupt, wasInterrupted } from './bench/run.js';
import { dist } from './bench/stats.js';

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

interface Opts extends AddOpts, DatapathOpts {
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
  try {
    if (o.only !== 'datapath') chains = await benchAdd(o);
    if (o.only !== 'add') for (const mode of o.modes) datapath.push(await benchDatapath(o, mode));
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
