// CPU placement and accounting for the data-path runs: pinning a simulated node's processes to one CPU (taskset), and
// CPU seconds read from /proc (an agent's own process, the whole machine). Linux only; a vanished process reads NaN.
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import os from 'node:os';
import { agentNodePid, type AgentProcess, type TestbedPod } from '../../test/testbed/index.js';

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** The node process of an agent: in the testbed (test/testbed/takeover.ts), shared with the take-over tests. */
export { agentNodePid } from '../../test/testbed/index.js';

/** CPU seconds (user + system) of a process itself. */
export function procCpuSeconds(pid: number | undefined): number {
  return statCpuSeconds(pid, 'self');
}

/** CPU seconds (user + system) of a process's children it has reaped: the tools an agent ran. */
export function procChildrenCpuSeconds(pid: number | undefined): number {
  return statCpuSeconds(pid, 'children');
}

/** An agent's CPU seconds by thread: its main (JavaScript) thread, the native relay thread, and the rest (exited threads too). */
export interface ThreadCpu {
  main: number;
  relay: number;
  other: number;
}

/** The relay thread's name (agent/native/hbone-relay/ahb.h RELAY_THREAD_NAME). */
const RELAY_THREAD = 'hbone-relay';

export function threadCpuSeconds(pid: number | undefined): ThreadCpu {
  const total = procCpuSeconds(pid);
  const none = { main: Number.NaN, relay: Number.NaN, other: Number.NaN };
  if (pid === undefined || !Number.isFinite(total)) return none;
  let main = Number.NaN;
  let relay = 0;
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const stat = readStat(`/proc/${pid}/task/${tid}/stat`);
      if (stat === undefined) continue;
      if (Number(tid) === pid) main = stat.self;
      else if (stat.comm === RELAY_THREAD) relay += stat.self;
    }
  } catch {
    return none;
  }
  return { main, relay, other: total - main - relay };
}

/**
 * A /proc stat file (a process's or a thread's): its command name, and the user + system CPU seconds of itself and of
 * its reaped children; undefined when it is gone.
 */
function readStat(file: string): { comm: string; self: number; children: number } | undefined {
  try {
    const stat = readFileSync(file, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // f[0] is field 3 (state): utime is field 14, stime field 15, cutime 16, cstime 17.
    return {
      comm: stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')')),
      self: (Number(f[11]) + Number(f[12])) / CLK_TCK,
      children: (Number(f[13]) + Number(f[14])) / CLK_TCK,
    };
  } catch {
    return undefined;
  }
}

function statCpuSeconds(pid: number | undefined, which: 'self' | 'children'): number {
  return (pid === undefined ? undefined : readStat(`/proc/${pid}/stat`)?.[which]) ?? Number.NaN;
}

export function machineBusySeconds(): number {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.slice(0, 8).reduce((a, b) => a + b, 0); // user nice system idle iowait irq softirq steal
  const idle = (v[3] ?? 0) + (v[4] ?? 0);
  return (total - idle) / CLK_TCK;
}

/**
 * Simulated node i's processes go on CPU i when pinning: two nodes on one 2-core VM behave like two 1-core machines.
 * Without it the scheduler sometimes puts a direct client and server on the same CPU, where a round trip skips the
 * cross-CPU wake-up and takes ~25 µs instead of ~90 µs: the direct baseline, and every ratio, then flips between runs.
 */
export function onCpu(o: { pin: boolean }, pod: TestbedPod, cmd: string, args: string[]): [string, string[]] {
  return o.pin ? ['taskset', ['-c', String(pod.node.index % os.availableParallelism()), cmd, ...args]] : [cmd, args];
}

export function pinAgent(agent: AgentProcess, cpu: number): void {
  const pid = agentNodePid(agent);
  if (pid === undefined) throw new Error(`agent on ${agent.spec.nodeName} is not running`);
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}
