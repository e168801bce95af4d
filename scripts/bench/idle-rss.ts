// Idle RSS of the agent with one enrolled pod (issue 12: ≤ 60 MB), and where it sits (scripts/bench/smaps.ts kinds,
// threads), for variants of the agent's start (node flags, environment, entry file) measured in alternation.
// Root, after the build: node --import=tsx scripts/bench/idle-rss.ts [--rounds 3] [--idle 15] [--heap]
//   [--variant 'label|node flags added after the agent's own|ENV=v ...|entry file (default dist/agent/src/main.js)'] ...
//   [--inspect 'shell command run at the sample, {pid} the agent's pid'] [--conns N: then N new connections to an
//   enrolled pod and N to a plain one (agent CPU per connection), and RSS 20 s after them]
// --heap adds --expose-gc and the GC preload (scripts/bench/agent-gc.mjs) to every variant and prints V8's figures after
// a forced GC, taken after the idle sample (the preload itself costs some RSS, the same for every variant).
import { existsSync, readFileSync } from 'node:fs';
import { execa } from 'execa';
import { AGENT_MAIN, AGENT_NODE_FLAGS, agentNodePid, type Testbed } from '../../test/testbed/index.js';
import { ambientTestbed } from './add-latency.js';
import { GC_PRELOAD, gcAndSample } from './churn.js';
import { procCpuSeconds } from './cpu.js';
import { RR } from './datapath.js';
import { AMBIENT, argValue, noteInterrupt, progress, withTestbeds } from './run.js';
import { processResidentByKind, RESIDENT_KINDS, type ResidentKinds } from './smaps.js';

interface Variant { label: string; flags: string[]; env: string[]; main: string }

interface Sample {
  rssKb: number; anonKb: number; fileKb: number; threads: number; kinds: ResidentKinds; v8?: Record<string, unknown>;
  /** With --conns: VmRSS after the connections and 20 s more idle, and agent CPU ms per new connection, mesh and plain. */
  afterTrafficKb?: number; cpuMsPerConn?: { mesh: number; plain: number };
}

function parseVariant(spec: string): Variant {
  const [label = '', flags = '', env = '', main = ''] = spec.split('|');
  const words = (s: string): string[] => s.split(/\s+/).filter((w) => w !== '');
  return { label, flags: words(flags), env: words(env), main: main.trim() === '' ? AGENT_MAIN : main.trim() };
}

function statusKb(pid: number, field: string): number {
  return Number(new RegExp(`^${field}:\\s+(\\d+)`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const mb = (kb: number): string => (kb / 1024).toFixed(1);

/** New connections from an enrolled pod to an enrolled one (HBONE) and to a plain one; then 20 s idle. */
async function traffic(tb: Testbed, pid: number, conns: number): Promise<Pick<Sample, 'afterTrafficKb' | 'cpuMsPerConn'>> {
  await tb.setNamespace('plain', {});
  const [client, meshServer, plainServer] = await tb.addPods([
    { node: 0, namespace: 'rss', name: 'rr-client' }, { node: 0, namespace: 'rss', name: 'rr-mesh' }, { node: 0, namespace: 'plain', name: 'rr-plain' },
  ]);
  if (!client || !meshServer || !plainServer) throw new Error('rr pods missing');
  const servers = [meshServer, plainServer].map((p) => p.spawn(process.execPath, [RR, 'server', '--port', '7000', '--seconds', '300'], { reject: false }));
  try {
    for (const p of [meshServer, plainServer]) await p.waitForPort(7000);
    const cpuMs = async (server: typeof meshServer): Promise<number> => {
      const c0 = procCpuSeconds(pid);
      await client.exec(process.execPath, [RR, 'client', '--host', server.ip, '--port', '7000', '--rounds', '200', '--conns', String(conns), '--warmup', '0'], { timeout: 300_000 });
      return ((procCpuSeconds(pid) - c0) / conns) * 1000;
    };
    const cpuMsPerConn = { mesh: await cpuMs(meshServer), plain: await cpuMs(plainServer) };
    await new Promise((r) => setTimeout(r, 20_000));
    return { afterTrafficKb: statusKb(pid, 'VmRSS'), cpuMsPerConn };
  } finally {
    for (const p of servers) p.kill();
  }
}

async function measure(v: Variant, idleSeconds: number, heap: boolean, inspect: string, conns: number): Promise<Sample> {
  const command = ['/usr/bin/env', ...v.env, process.execPath, ...AGENT_NODE_FLAGS, ...v.flags, ...(heap ? ['--expose-gc', `--import=${GC_PRELOAD}`] : []), v.main];
  return withTestbeds([ambientTestbed('iptables', { agentCommand: command })], async ([tb]: Testbed[]) => {
    const agent = tb?.nodes[0]?.agent;
    if (tb === undefined || agent === undefined) throw new Error('no agent');
    await tb.setNamespace('rss', AMBIENT);
    await tb.addPods([{ node: 0, namespace: 'rss', name: 'idle-0' }]);
    const pid = agentNodePid(agent);
    if (pid === undefined) throw new Error('agent not running');
    // RSS on the way (V8's memory reducer gives pages back some seconds after the allocations stop).
    const t0 = Date.now();
    const curve: string[] = [];
    while (Date.now() - t0 < idleSeconds * 1000) {
      curve.push(`${Math.round((Date.now() - t0) / 1000)}s ${mb(statusKb(pid, 'VmRSS'))}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    progress(`  RSS after the ADD, MB: ${curve.join(', ')}`);
    const s: Sample = { rssKb: statusKb(pid, 'VmRSS'), anonKb: statusKb(pid, 'RssAnon'), fileKb: statusKb(pid, 'RssFile'), threads: statusKb(pid, 'Threads'), kinds: processResidentByKind(pid) };
    if (inspect !== '') progress((await execa('sh', ['-c', inspect.replaceAll('{pid}', String(pid))], { reject: false, all: true })).all ?? '');
    if (conns > 0) Object.assign(s, await traffic(tb, pid, conns));
    if (heap) {
      await gcAndSample(agent, 1);
      const rec = (await agent.logs()).find((r) => r.msg === 'bench gc' && r.seq === 1);
      s.v8 = { rssAfterGcKb: statusKb(pid, 'VmRSS'), heapTotal: rec?.heapTotal, heapUsed: rec?.heapUsed, external: rec?.external, spaces: rec?.spaces, ...(rec?.v8 as object | undefined) };
    }
    return s;
  });
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: string): string => argValue(args, name, dflt);
  const rounds = Number(opt('--rounds', '3'));
  const idle = Number(opt('--idle', '15'));
  const heap = args.includes('--heap');
  const conns = Number(opt('--conns', '0'));
  if (conns > 0 && existsSync('/tmp/bench-quiet')) progress('warning: /tmp/bench-quiet exists (another benchmark is measuring): CPU figures are not to be trusted');
  const variants = args.flatMap((a, i) => (args[i - 1] === '--variant' ? [parseVariant(a)] : []));
  if (variants.length === 0) variants.push(parseVariant('production'));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => noteInterrupt(sig));
  const samples = new Map<string, Sample[]>(variants.map((v) => [v.label, []]));
  for (let r = 0; r < rounds; r++) {
    for (const v of variants) {
      progress(`idle RSS: ${v.label}, round ${r + 1} of ${rounds}`);
      const s = await measure(v, idle, heap, opt('--inspect', ''), conns);
      samples.get(v.label)?.push(s);
      progress(`  ${v.label}: RSS ${mb(s.rssKb)} MB (anon ${mb(s.anonKb)}, file ${mb(s.fileKb)}), ${s.threads} threads; ${RESIDENT_KINDS.map((k) => `${k} ${mb(s.kinds[k])}`).join(', ')}`);
      if (s.cpuMsPerConn) progress(`  ${v.label}: after ${conns} mesh + ${conns} plain connections and 20 s: RSS ${mb(s.afterTrafficKb ?? Number.NaN)} MB; agent CPU ms a connection: mesh ${s.cpuMsPerConn.mesh.toFixed(3)}, plain ${s.cpuMsPerConn.plain.toFixed(3)}`);
      if (s.v8) progress(`  ${v.label}: V8 after a forced GC ${JSON.stringify(s.v8)}`);
    }
  }
  console.log(`Idle agent RSS, one enrolled pod, ${idle} s after its ADD, median of ${rounds} rounds, MB:`);
  console.log(`| variant | VmRSS | anon | file | threads | ${RESIDENT_KINDS.join(' | ')} | all VmRSS |`);
  console.log(`|---|${'---:|'.repeat(4 + RESIDENT_KINDS.length)}---|`);
  for (const v of variants) {
    const ss = samples.get(v.label) ?? [];
    const med = (f: (s: Sample) => number): string => mb(median(ss.map(f)));
    if (conns > 0) console.log(`${v.label}: after traffic VmRSS ${med((s) => s.afterTrafficKb ?? Number.NaN)} MB; CPU ms a connection mesh ${median(ss.map((s) => s.cpuMsPerConn?.mesh ?? Number.NaN)).toFixed(3)} (${ss.map((s) => s.cpuMsPerConn?.mesh.toFixed(3)).join(', ')}), plain ${median(ss.map((s) => s.cpuMsPerConn?.plain ?? Number.NaN)).toFixed(3)} (${ss.map((s) => s.cpuMsPerConn?.plain.toFixed(3)).join(', ')})`);
    console.log(`| ${v.label} | ${med((s) => s.rssKb)} | ${med((s) => s.anonKb)} | ${med((s) => s.fileKb)} | ${median(ss.map((s) => s.threads))} | ${RESIDENT_KINDS.map((k) => med((s) => s.kinds[k])).join(' | ')} | ${ss.map((s) => mb(s.rssKb)).join(', ')} |`);
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`idle-rss: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
