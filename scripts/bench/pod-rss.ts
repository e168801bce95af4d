// A narrow, repeatable measurement of what one enrolled pod costs the agent (issue 12): one node, N pods ADDed and
// DELeted; RSS, smaps_rollup, mappings grouped by kind, V8 heap (after a forced GC), fds at 0 and N pods and after DEL.
// Root: node --import=tsx scripts/bench/pod-rss.ts [--pods 60] [--concurrency 16] [--cycles 1] [--mode iptables]
//   [--conns N: agent CPU and GC pauses per new connection, mesh and plain] [--node-flags "F ..." after the agent's own];
// env AMBIENT_BENCH_HEAP_DIR=<dir> writes a heap snapshot at each sample (scripts/bench/agent-gc.mjs).
import { readdirSync } from 'node:fs';
import { AGENT_MAIN, AGENT_NODE_FLAGS, type PodSpec, type RedirectMode } from '../../test/testbed/index.js';
import { ambientTestbed, deletePodsBatched } from './add-latency.js';
import { RR } from './datapath.js';
import { GC_PRELOAD, gcAndSample } from './churn.js';
import { agentNodePid, procCpuSeconds } from './cpu.js';
import { AMBIENT, argValue, noteInterrupt, progress, withTestbeds } from './run.js';
import { byMapping, rollup } from './smaps.js';

interface Sample { label: string; rss: number; heapUsed: number; fds: number; rollup: Record<string, number>; maps: Record<string, number> }

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string, dflt: string): string => argValue(args, name, dflt);
  const pods = Number(opt('--pods', '60'));
  const concurrency = Number(opt('--concurrency', '16'));
  const mode = opt('--mode', 'iptables') as RedirectMode;
  const cycles = Number(opt('--cycles', '1'));
  const conns = Number(opt('--conns', '0'));
  for (const sig of ['SIGINT', 'SIGTERM'] as const) process.on(sig, () => noteInterrupt(sig));
  const extraFlags = opt('--node-flags', '').split(/\s+/).filter((f) => f !== '');
  const command = [process.execPath, ...AGENT_NODE_FLAGS, ...extraFlags, '--expose-gc', `--import=${GC_PRELOAD}`, AGENT_MAIN];
  await withTestbeds([ambientTestbed(mode, { agentCommand: command })], async ([tb]) => {
    if (tb === undefined) throw new Error('testbed missing');
    const agent = tb.nodes[0]?.agent;
    if (agent === undefined) throw new Error('no agent');
    await tb.setNamespace('rss', AMBIENT);
    let seq = 0;
    const samples: Sample[] = [];
    /** The preload's GC pause totals (read with a forced GC, which adds no scavenge). */
    const gcTotals = async (): Promise<{ scavenges: number; scavengeMs: number }> => {
      await gcAndSample(agent, ++seq);
      const rec = (await agent.logs()).find((r) => r.msg === 'bench gc' && r.seq === seq);
      const g = rec?.gcTotals as { scavenges: number; scavengeMs: number } | undefined;
      return g ?? { scavenges: Number.NaN, scavengeMs: Number.NaN };
    };
    /** Agent CPU seconds of each cycle's ADD batch and DEL batch. */
    const cpu: [number, number][] = [];
    const sample = async (label: string): Promise<void> => {
      const s = await gcAndSample(agent, ++seq);
      const pid = agentNodePid(agent) ?? 0;
      samples.push({ label, rss: s.rss, heapUsed: s.heapUsed, fds: readdirSync(`/proc/${pid}/fd`).length, rollup: rollup(pid), maps: byMapping(pid) });
      const rec = (await agent.logs()).find((r) => r.msg === 'bench gc' && r.seq === seq);
      progress(`${label}: heapTotal ${Number(rec?.heapTotal) >> 10} external ${Number(rec?.external) >> 10} arrayBuffers ${Number(rec?.arrayBuffers) >> 10} KiB; spaces (committed, resident, used) ${JSON.stringify(rec?.spaces)}`);
      progress(`${label}: RSS ${s.rss} KiB, heap used ${Math.round(s.heapUsed)} KiB`);
    };
    const warm = await tb.addPods(Array.from({ length: 4 }, (_, i): PodSpec => ({ node: 0, namespace: 'rss', name: `warm-${i}` })), { concurrency: 4 });
    await deletePodsBatched(tb, warm, 4);
    for (let c = 0; c < cycles; c++) {
      await sample(`cycle ${c + 1} before`);
      const cpu0 = procCpuSeconds(agentNodePid(agent));
      const added = await tb.addPods(Array.from({ length: pods }, (_, i): PodSpec => ({ node: 0, namespace: 'rss', name: `c${c}-p${i}` })), { concurrency });
      const addCpu = procCpuSeconds(agentNodePid(agent)) - cpu0;
      await sample(`cycle ${c + 1} with ${added.length} pods`);
      const cpu1 = procCpuSeconds(agentNodePid(agent));
      const del = await deletePodsBatched(tb, added, concurrency);
      cpu.push([addCpu, procCpuSeconds(agentNodePid(agent)) - cpu1]);
      if (del.failures.length) progress(`DEL failures: ${del.failures.slice(0, 3).join('; ')}`);
      await sample(`cycle ${c + 1} after DEL`);
    }
    // Agent CPU per connection: rr.mjs from an enrolled pod to an enrolled one (HBONE) and to a plain one (the JS relay).
    if (conns > 0) {
      await tb.setNamespace('plain', {});
      const [client, meshServer, plainServer] = await tb.addPods([
        { node: 0, namespace: 'rss', name: 'rr-client' }, { node: 0, namespace: 'rss', name: 'rr-mesh' }, { node: 0, namespace: 'plain', name: 'rr-plain' },
      ]);
      if (!client || !meshServer || !plainServer) throw new Error('rr pods missing');
      const servers = [meshServer, plainServer].map((p) => p.spawn(process.execPath, [RR, 'server', '--port', '7000', '--seconds', '300'], { reject: false }));
      for (const p of [meshServer, plainServer]) await p.waitForPort(7000);
      for (let round = 0; round < 2; round++) {
        for (const [what, server] of [['mesh', meshServer], ['plain', plainServer]] as const) {
          const pid = agentNodePid(agent);
          const g0 = await gcTotals();
          const c0 = procCpuSeconds(pid);
          await client.exec(process.execPath, [RR, 'client', '--host', server.ip, '--port', '7000', '--rounds', '2000', '--conns', String(conns), '--warmup', '10'], { timeout: 300_000 });
          const c1 = procCpuSeconds(pid);
          const g1 = await gcTotals();
          console.log(`  GC: ${g1.scavenges - g0.scavenges} scavenges, ${(g1.scavengeMs - g0.scavengeMs).toFixed(0)} ms`);
          console.log(`${what} round ${round + 1}: agent CPU ${(c1 - c0).toFixed(2)} s for ${conns} new connections + 2000 round trips: ${(((c1 - c0) / conns) * 1000).toFixed(3)} ms a connection (round trips included)`);
        }
      }
      for (const s of servers) s.kill();
    }
    const perPod = (a: number, b: number): string => ((b - a) / pods).toFixed(1);
    for (let c = 0; c < cycles; c++) {
      const [b, f, a] = [samples[3 * c], samples[3 * c + 1], samples[3 * c + 2]];
      if (!b || !f || !a) continue;
      console.log(`cycle ${c + 1}: RSS ${b.rss} -> ${f.rss} -> ${a.rss} KiB: ${perPod(b.rss, f.rss)} KiB a pod; heap ${perPod(b.heapUsed, f.heapUsed)}; fds ${b.fds} -> ${f.fds} -> ${a.fds}; agent CPU s ADD ${cpu[c]?.[0].toFixed(2)} DEL ${cpu[c]?.[1].toFixed(2)}`);
      const keys = new Set([...Object.keys(b.rollup)]);
      console.log('  smaps_rollup KiB a pod: ' + [...keys].filter((k) => k !== 'Pss_Dirty').map((k) => `${k} ${perPod(b.rollup[k] ?? 0, f.rollup[k] ?? 0)}`).join(', '));
      const mk = new Set([...Object.keys(b.maps), ...Object.keys(f.maps)]);
      const rows = [...mk].map((k) => [k, (f.maps[k] ?? 0) - (b.maps[k] ?? 0), (a.maps[k] ?? 0) - (b.maps[k] ?? 0)] as const).filter(([, d]) => Math.abs(d) >= 64).sort((x, y) => y[1] - x[1]);
      for (const [k, d, after] of rows) console.log(`  ${k}: +${d} KiB with pods (${(d / pods).toFixed(1)} a pod), ${after >= 0 ? '+' : ''}${after} after DEL`);
    }
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`pod-rss: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
