// What the take-over tests and benchmark share: the echo server and new-connection loop (scripts/bench), a second
// agent for a running one (same flags and state dir, its own log), log lookups, and an agent's RSS and fds from /proc.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { AgentProcess, type AgentLogRecord } from './agent-process.js';
import type { TestbedPod } from './pod.js';
import { REPO_ROOT } from './repo.js';
import type { Testbed } from './testbed.js';

/** Debian's python3 (the one on PATH may be a pyenv build). */
export const PY = '/usr/bin/python3';
/** Binary echo server (half-close echoed): `PY ECHO_SERVER PORT [ADDRESS]` (0.0.0.0 by default; `::` for IPv6). */
export const ECHO_SERVER = join(REPO_ROOT, 'scripts/bench/echo-server.py');
/** The port the take-over tests and benchmark run ECHO_SERVER on. */
export const ECHO_PORT = 9000;
const CONNECT_LOOP = join(REPO_ROOT, 'scripts/bench/connect-loop.py');

/** connect-loop.py's summary: counts, the first errors, latency percentiles and every sample ([start s, ms | null]). */
export interface ConnectLoopResult {
  ok: number;
  fails: number;
  errors: string[];
  p50ms: number | null;
  p99ms: number | null;
  samples: [number, number | null][];
}

/** A new connection to `ip`:ECHO_PORT from `pod` every `periodMs` (a line, its echo, close) until stop(). */
export function startConnectLoop(tb: Testbed, pod: TestbedPod, ip: string, tag: string, periodMs = 20): { stop: () => Promise<ConnectLoopResult> } {
  const stopFile = join(tb.runDir, `stop-loop-${tag}`);
  const proc = pod.spawn(PY, [CONNECT_LOOP, ip, String(ECHO_PORT), stopFile, String(periodMs)], { reject: false, timeout: 320_000 });
  return {
    async stop() {
      await pod.exec('touch', [stopFile]);
      const r = await proc;
      const last = String(r.stdout).trim().split('\n').pop() ?? '';
      if (!last.startsWith('{')) throw new Error(`connect loop ${tag} printed no summary: ${String(r.stdout).slice(-500)} ${String(r.stderr)}`);
      return JSON.parse(last) as ConnectLoopResult;
    },
  };
}

/** A second agent for `agent`'s node: the same flags, state dir and socket, its log in `<log>-<tag>.log`. Not started. */
export function successorOf(
  agent: AgentProcess, tag: string, opts: { env?: Record<string, string>; readyTimeoutMs?: number; extraArgs?: string[]; command?: string[] } = {},
): AgentProcess {
  const s = agent.spec;
  return new AgentProcess({
    ...s,
    ...(opts.command ? { command: opts.command } : {}),
    logFile: s.logFile.replace(/\.log$/, `-${tag}.log`),
    ...(opts.env ? { env: { ...s.env, ...opts.env } } : {}),
    ...(opts.readyTimeoutMs !== undefined ? { readyTimeoutMs: opts.readyTimeoutMs } : {}),
    ...(opts.extraArgs ? { extraArgs: [...s.extraArgs, ...opts.extraArgs] } : {}),
  });
}

/** The first log line with this message. */
export function findLog(logs: AgentLogRecord[], msg: string): AgentLogRecord | undefined {
  return logs.find((l) => l.msg === msg);
}

/** The node process of an agent (AgentProcess.pid is nsenter's, which execs the agent; a child if it forked). */
export function agentNodePid(agent: AgentProcess): number | undefined {
  const pid = agent.pid;
  if (pid === undefined) return undefined;
  try {
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'nsenter') return pid;
    const child = Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(child) && child > 0 ? child : pid;
  } catch {
    return pid;
  }
}

/** VmRSS of a process in KiB; NaN when it is gone (or no pid). */
export function procRssKb(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    return Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? Number.NaN);
  } catch {
    return Number.NaN;
  }
}

/** Open file descriptors of a process; NaN when it is gone (or no pid). */
export function procFdCount(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return Number.NaN;
  }
}
