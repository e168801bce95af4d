// One node agent as a child process inside its node's netns (nsenter --net), its log file and its
// readiness (GET /v1/status on the event socket). Signals go to the agent's own process group, by PID.
import { type ChildProcess, spawn } from 'node:child_process';
import { closeSync, openSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { request } from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { AGENT_MAIN, AGENT_NODE_FLAGS } from './repo.js';

export type RedirectMode = 'iptables' | 'nftables' | 'ebpf';

export interface AgentSpec {
  /** Program and leading arguments run before `agent ...`; default [node, dist/agent/src/main.js]. */
  command?: string[];
  nodeName: string;
  /** Path of the node netns, e.g. /run/netns/<node>. */
  netnsPath: string;
  stateDir: string;
  socketPath: string;
  workloadsDir: string;
  /** The builtin CA's root folder, shared by every node of the testbed (one trust root for the cluster). */
  caDir: string;
  redirectMode: RedirectMode;
  logLevel: string;
  logFile: string;
  /** Appended to the command line. */
  extraArgs: string[];
  readyTimeoutMs: number;
  /** Added to the agent's environment (e.g. test knobs). */
  env?: Record<string, string>;
}

/** A pino JSON line from the agent's log. */
export interface AgentLogRecord {
  level: number;
  time: number;
  msg: string;
  [key: string]: unknown;
}

export interface AgentExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface HttpReply {
  statusCode: number;
  body: unknown;
  text: string;
}

/** The agent did not answer `{"ready":true}` in time, or exited first. `logTail` has its last log lines. */
export class AgentNotReadyError extends Error {
  readonly code = 'TB_ERR_AGENT_NOT_READY';
  constructor(
    readonly nodeName: string,
    reason: string,
    readonly logTail: string,
  ) {
    super(`agent on ${nodeName} not ready: ${reason}\n--- last agent log lines ---\n${logTail}`);
    this.name = 'AgentNotReadyError';
  }
}

interface Running {
  child: ChildProcess;
  pid: number;
  exited: Promise<AgentExit>;
}

export class AgentProcess {
  #run: Running | undefined;
  /** Log size when the last process was started: where its own lines begin. */
  #logOffset: number | undefined;

  constructor(readonly spec: AgentSpec) {}

  /** The full command line (argv) the agent is started with. */
  get argv(): string[] {
    const s = this.spec;
    return [
      'nsenter',
      `--net=${s.netnsPath}`,
      ...(s.command ?? [process.execPath, ...AGENT_NODE_FLAGS, AGENT_MAIN]),
      'agent',
      '--node-name', s.nodeName,
      '--state-dir', s.stateDir,
      '--socket', s.socketPath,
      '--workloads-dir', s.workloadsDir,
      '--ca-dir', s.caDir,
      '--redirect-mode', s.redirectMode,
      '--log-level', s.logLevel,
      ...s.extraArgs,
    ];
  }

  /** PID of the running agent (also its process group id), undefined when not running. */
  get pid(): number | undefined {
    return this.#run?.pid;
  }

  get running(): boolean {
    return this.#run !== undefined;
  }

  /** Resolves when the current agent process exits; undefined when not running. */
  get exited(): Promise<AgentExit> | undefined {
    return this.#run?.exited;
  }

  /** Start the agent (appending to its log) and wait until /v1/status says ready, asking every `pollMs` (default 100). */
  async start(opts: { pollMs?: number } = {}): Promise<void> {
    if (this.#run !== undefined) throw new Error(`agent on ${this.spec.nodeName} is already running (pid ${this.#run.pid})`);
    const [cmd, ...args] = this.argv;
    const fd = openSync(this.spec.logFile, 'a');
    let logOffset = 0;
    let child: ChildProcess;
    try {
      logOffset = statSync(this.spec.logFile).size;
      // Own process group: a Ctrl-C on the demo's terminal reaches the testbed, which stops agents in order.
      child = spawn(cmd ?? 'nsenter', args, { stdio: ['ignore', fd, fd], detached: true, ...(this.spec.env ? { env: { ...process.env, ...this.spec.env } } : {}) });
    } finally {
      closeSync(fd);
    }
    const exited = new Promise<AgentExit>((resolve) => {
      child.once('exit', (code, signal) => resolve({ code, signal }));
      child.once('error', () => resolve({ code: null, signal: null }));
    });
    if (child.pid === undefined) {
      await exited;
      throw new AgentNotReadyError(this.spec.nodeName, `could not spawn ${cmd}`, '');
    }
    const run: Running = { child, pid: child.pid, exited };
    this.#run = run;
    this.#logOffset = logOffset;
    void exited.then(() => {
      if (this.#run === run) this.#run = undefined;
    });
    await this.waitReady(this.spec.readyTimeoutMs, opts.pollMs);
  }

  /** Poll GET /v1/status every `pollMs` until `{"ready":true}`; throws AgentNotReadyError with the log tail. */
  async waitReady(timeoutMs = this.spec.readyTimeoutMs, pollMs = 100): Promise<unknown> {
    const deadline = Date.now() + timeoutMs;
    let last = 'no answer yet';
    for (;;) {
      const run = this.#run;
      if (run === undefined) {
        throw new AgentNotReadyError(this.spec.nodeName, 'agent process exited', await this.logTail());
      }
      try {
        const reply = await this.request('GET', '/v1/status', undefined, 2000);
        if (isReady(reply.body)) return reply.body;
        last = `status ${reply.statusCode}: ${reply.text.slice(0, 200)}`;
      } catch (err) {
        last = err instanceof Error ? err.message : String(err);
      }
      if (Date.now() > deadline) {
        throw new AgentNotReadyError(this.spec.nodeName, `timeout after ${timeoutMs} ms (${last})`, await this.logTail());
      }
      await Promise.race([sleep(pollMs), run.exited]);
    }
  }

  /** One HTTP/1.1 request on the agent's Unix socket; the body is parsed as JSON when it is JSON. */
  request(method: string, path: string, body?: unknown, timeoutMs = 5000): Promise<HttpReply> {
    return new Promise((resolve, reject) => {
      const payload = body === undefined ? undefined : JSON.stringify(body);
      const req = request(
        {
          socketPath: this.spec.socketPath,
          path,
          method,
          headers: payload === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
          timeout: timeoutMs,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown = undefined;
            try {
              parsed = JSON.parse(text);
            } catch {
              // not JSON: body stays undefined, text has it
            }
            resolve({ statusCode: res.statusCode ?? 0, body: parsed, text });
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  /** Send `signal` to the agent's process group and wait until the agent exits. Default SIGKILL ("kill -9"). */
  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<AgentExit | undefined> {
    const run = this.#run;
    if (run === undefined) return undefined;
    signalGroup(run.pid, signal);
    return run.exited;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the agent has exited. */
  async stop(graceMs = 5000): Promise<AgentExit | undefined> {
    const run = this.#run;
    if (run === undefined) return undefined;
    signalGroup(run.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(run.pid, 'SIGKILL'), graceMs);
    try {
      return await run.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILL without waiting: for process-exit hooks, which cannot wait. */
  killSync(): void {
    if (this.#run !== undefined) signalGroup(this.#run.pid, 'SIGKILL');
  }

  /** The raw log; with `currentRun`, only what the running (or last started) process wrote. */
  async logText(opts: { currentRun?: boolean } = {}): Promise<string> {
    let data: Buffer;
    try {
      data = await readFile(this.spec.logFile);
    } catch {
      return '';
    }
    const from = opts.currentRun === true ? (this.#logOffset ?? 0) : 0;
    return data.subarray(from).toString('utf8');
  }

  /** The log's pino JSON lines, parsed; lines that are not JSON objects are skipped. */
  async logs(opts: { currentRun?: boolean } = {}): Promise<AgentLogRecord[]> {
    const out: AgentLogRecord[] = [];
    for (const line of (await this.logText(opts)).split('\n')) {
      if (!line.startsWith('{')) continue;
      try {
        const v: unknown = JSON.parse(line);
        if (typeof v === 'object' && v !== null && !Array.isArray(v)) out.push(v as AgentLogRecord);
      } catch {
        // partial or foreign line
      }
    }
    return out;
  }

  /** The last `lines` lines of the log. */
  async logTail(lines = 40): Promise<string> {
    return (await this.logText()).trimEnd().split('\n').slice(-lines).join('\n');
  }

}

function isReady(body: unknown): boolean {
  return typeof body === 'object' && body !== null && 'ready' in body && body.ready === true;
}

/** Signal a process group we created (pid == pgid because we spawned it detached). */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}
