// Runs node tools (iptables-restore, nft, ipset, ip) in the agent's namespace or inside a pod's (started there: spawn.ts).
// The one place that spawns them; failures carry the tool's stderr so logs and CNI errors show the real cause.
import { accessSync, constants } from 'node:fs';
import type { Socket } from 'node:net';
import { AmbientError } from '../errors.js';
import { type ChildExit, spawnChild } from './spawn.js';

/** System directories searched for node tools, in order. PATH is not used: an npm bin dir can shadow `nft`. */
const SYSTEM_DIRS = ['/usr/sbin', '/sbin', '/usr/bin', '/bin'];
const resolved = new Map<string, string>();

/** The absolute path of a system tool; throws a clear error when the package providing it is missing. */
export function systemTool(name: string): string {
  let path = resolved.get(name);
  if (path) return path;
  for (const dir of SYSTEM_DIRS) {
    try {
      accessSync(`${dir}/${name}`, constants.X_OK);
      path = `${dir}/${name}`;
      break;
    } catch {
      // try the next directory
    }
  }
  if (!path) throw new ToolError(name, `${name} not found in ${SYSTEM_DIRS.join(', ')}; install it (see scripts/setup.sh)`, undefined);
  resolved.set(name, path);
  return path;
}

export class ToolError extends AmbientError<'AMB_ERR_TOOL'> {
  constructor(readonly command: string, readonly stderr: string, readonly exitCode: number | undefined, options: { cause?: unknown } = {}) {
    super('AMB_ERR_TOOL', `${command} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}: ${stderr.trim() || 'no output'}`, options);
  }
}

export interface RunOptions {
  /** Path of a network namespace to run in (as nsenter --net would); undefined = the agent's own. */
  netns?: string;
  input?: string;
  timeoutMs?: number;
}

/** Bound on each of a tool's stdout and stderr: past it the tool is killed and the run fails. */
export const MAX_TOOL_OUTPUT = 16 * 1024 * 1024;
const SIGKILL = 9;

/** What a child run to its end left: its output, its exit, and why it was cut short if we killed it. */
export interface ChildOutcome {
  stdout: string;
  stderr: string;
  exit: ChildExit;
  /** Set when the run was killed here: a time-out, or output past the bound (`cutBy` says which). */
  cut?: string;
  cutBy?: 'timeout' | 'output';
}

export interface ChildRunOptions extends RunOptions {
  /** Bound on each of stdout and stderr (default MAX_TOOL_OUTPUT): past it the child is killed. */
  maxOutput?: number;
}

/**
 * Starts `file` (absolute) with `argv` (argv[0] included) and `env` through posix_spawn (spawn.ts), writes `input` to
 * it, and collects its output until it is reaped: a non-zero exit is an outcome, not an error (only a failed start
 * throws). Killed with SIGKILL after `timeoutMs` (default 15 s) or once an output passes its bound. Forking the caller
 * instead costs time growing with its memory: the agent, and the test runtime that runs CNI plugins the way a Go
 * runtime (os/exec: vfork) does.
 */
export async function runChild(file: string, argv: string[], env: NodeJS.ProcessEnv, opts: ChildRunOptions = {}): Promise<ChildOutcome> {
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const maxOutput = opts.maxOutput ?? MAX_TOOL_OUTPUT;
  const child = await spawnChild(file, argv, env, opts.netns === undefined ? {} : { netns: opts.netns });
  let cut: Pick<ChildOutcome, 'cut' | 'cutBy'> | undefined;
  let reaped = false;
  // A grandchild may hold the pipes open after the child itself is gone: once reaped, a cut run stops the reading.
  const stopReading = (): void => { child.stdout.destroy(); child.stderr.destroy(); };
  const kill = (cutBy: 'timeout' | 'output', why: string): void => {
    cut ??= { cut: why, cutBy };
    if (reaped) return stopReading(); // never signal a reaped pid: it may be someone else's now
    try {
      process.kill(child.pid, SIGKILL);
    } catch {
      // exiting already
    }
  };
  const exited = child.exited.then((exit) => {
    reaped = true;
    if (cut !== undefined) stopReading();
    return exit;
  });
  const collect = (stream: Socket, name: string): Promise<string> => new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > maxOutput) {
        kill('output', `${name} exceeded ${maxOutput} bytes`);
        stream.destroy();
        return;
      }
      chunks.push(chunk);
    });
    stream.on('error', () => undefined); // the exit status says what went wrong
    stream.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
  });
  const timer = setTimeout(() => kill('timeout', `timed out after ${timeoutMs} ms`), timeoutMs);
  child.stdin.on('error', () => undefined); // EPIPE: the child exited without reading its input
  child.stdin.end(opts.input ?? '');
  // Both outputs at their end: the child is exiting; reap it now rather than at the backoff's next poll.
  const outputs = Promise.all([collect(child.stdout, 'stdout'), collect(child.stderr, 'stderr')]);
  void outputs.then(() => child.nudgeReap());
  try {
    const [exit, [stdout, stderr]] = await Promise.all([exited, outputs]);
    return { stdout, stderr, exit, ...cut };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Runs a tool and returns its stdout; throws ToolError with stderr on failure (non-zero exit, killed, timed out, output
 * past MAX_TOOL_OUTPUT).
 */
export async function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const file = systemTool(cmd);
  const shown = [cmd, ...args].join(' ');
  let r: ChildOutcome;
  try {
    r = await runChild(file, [file, ...args], process.env, opts);
  } catch (err) {
    throw new ToolError(shown, (err as Error).message, undefined, { cause: err });
  }
  const { stdout, stderr, exit } = r;
  if (r.cut !== undefined) throw new ToolError(shown, `${r.cut}${stderr ? `; stderr: ${stderr}` : ''}`, exit.code);
  if (exit.signal !== undefined) throw new ToolError(shown, `${stderr}${stderr ? '; ' : ''}killed by signal ${exit.signal}`, undefined);
  if (exit.code !== 0) throw new ToolError(shown, stderr, exit.code);
  return stdout;
}
