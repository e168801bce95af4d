// Cost of starting one node tool at the agent's memory size: runTool (posix_spawn, vfork) next to execa (libuv fork),
// alternating in the same run, with the process grown to a given RSS first. Prints both and the ratio. No root needed.
// Run: node --import=tsx scripts/bench/spawn.ts [runs] [rss-MiB]
import { execa } from 'execa';
import { runTool, systemTool } from '../../agent/src/platform/exec.js';
import { dist, f1 } from './stats.js';

const runs = Number(process.argv[2] ?? 100);
const rssMiB = Number(process.argv[3] ?? 200);
// Touched memory, as an agent with many pods holds: fork copies its page tables, vfork shares them.
const ballast: Buffer[] = [];
while (process.memoryUsage().rss < rssMiB * 1024 * 1024) ballast.push(Buffer.alloc(4 * 1024 * 1024, 1));

const tool = systemTool('true');
const spawnMs: number[] = [];
const execaMs: number[] = [];
for (let i = 0; i < runs; i++) {
  let t0 = performance.now();
  await runTool('true', []);
  spawnMs.push(performance.now() - t0);
  t0 = performance.now();
  await execa(tool, [], { input: '' });
  execaMs.push(performance.now() - t0);
}
const a = dist(spawnMs);
const b = dist(execaMs);
console.log(`RSS ${Math.round(process.memoryUsage().rss / 1048576)} MiB (ballast ${ballast.length * 4} MiB), ${runs} runs of ${tool}, alternating`);
console.log(`posix_spawn runTool  p50 ${f1(a.p50)} ms  p90 ${f1(a.p90)} ms  max ${f1(a.max)} ms`);
console.log(`execa (libuv fork)   p50 ${f1(b.p50)} ms  p90 ${f1(b.p90)} ms  max ${f1(b.max)} ms`);
console.log(`median ratio execa/posix_spawn: ${f1(b.p50 / a.p50)}x`);
