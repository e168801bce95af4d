#!/usr/bin/env node
// Entry point of ambient-cni: validates the invocation, dispatches to one command, and prints its result or error.
// The only writer to stdout and the only place errors become CNI error JSON (a CniError keeps its code, anything else is 999).
import { realpathSync, writeSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { AgentClient, type AgentTransport } from './agent-client.js';
import { cmdAdd } from './commands/add.js';
import { cmdCheck } from './commands/check.js';
import type { Command } from './commands/context.js';
import { cmdDel } from './commands/del.js';
import { cmdGc } from './commands/gc.js';
import { cmdStatus } from './commands/status.js';
import { decodeNetConf, declaredVersion, parseNetConf, type JsonObject } from './config.js';
import { CniCode, CniError } from './errors.js';
import { createPluginLogger, type Logger, type StderrSink } from './log.js';
import { MAX_STDIN_BYTES } from './shim-constants.js';
import { PREFERRED_VERSION, assertCommandAllowed, parseEnv, versionResult, type CniCommand } from './version.js';

export interface RunIO {
  env: Record<string, string | undefined>;
  stdin: Buffer | string;
  stdout: (s: string) => void;
  stderr: StderrSink;
  /** Set when the agent itself runs the plugin for the native fast path: requests go to its dispatcher, not the socket. */
  transport?: AgentTransport;
}

const DISPATCH: Record<Exclude<CniCommand, 'VERSION'>, Command> = {
  ADD: cmdAdd,
  DEL: cmdDel,
  CHECK: cmdCheck,
  STATUS: cmdStatus,
  GC: cmdGc,
};

/** Runs one CNI invocation and returns the exit code. Never throws; never touches process.env or process.stdout. */
export async function run(io: RunIO): Promise<number> {
  const logs = createPluginLogger(io.stderr);
  // The error result echoes the config's cniVersion (spec); before it is known, the preferred version.
  let cniVersion: string = PREFERRED_VERSION;
  try {
    const env = parseEnv(io.env);
    const stdin = readInput(io.stdin);
    if (env.command === 'VERSION') {
      print(io, { ...versionResult(stdin) });
      return 0;
    }

    const raw = decodeNetConf(stdin);
    cniVersion = declaredVersion(raw) ?? cniVersion;
    const conf = parseNetConf(raw, { lenient: env.command === 'DEL' });
    assertCommandAllowed(env.command, conf.cniVersion);
    logs.setLevel(conf.logLevel);

    const log = logs.log.child({ command: env.command, ...(env.containerId ? { containerId: env.containerId } : {}) });
    const agent = new AgentClient(conf.agentSocket, conf.agentTimeoutMs, io.transport);
    const result = await DISPATCH[env.command]({ env, conf, log, logs, agent });
    if (result) print(io, result);
    return 0;
  } catch (thrown) {
    return report(io, logs.log, thrown, cniVersion);
  }
}

function readInput(stdin: Buffer | string): string {
  const size = typeof stdin === 'string' ? Buffer.byteLength(stdin) : stdin.length;
  if (size > MAX_STDIN_BYTES) {
    throw new CniError(CniCode.DecodingFailure, `network configuration on stdin is larger than ${MAX_STDIN_BYTES} bytes`);
  }
  return typeof stdin === 'string' ? stdin : stdin.toString('utf8');
}

function report(io: RunIO, log: Logger, thrown: unknown, cniVersion: string): number {
  const err = asCniError(thrown);
  // Expected failures are logged as their message and cause; only bugs get a stack trace.
  if (err.cniCode === CniCode.Internal) log.error({ err, code: err.cniCode }, 'command failed');
  else log.error({ code: err.cniCode, error: err.message, cause: causeMessage(err) }, 'command failed');
  const out: JsonObject = { cniVersion, code: err.cniCode, msg: err.message };
  if (err.details !== undefined) out.details = err.details;
  print(io, out);
  return 1;
}

function causeMessage(err: Error): string | undefined {
  return err.cause instanceof Error ? err.cause.message : err.cause === undefined ? undefined : String(err.cause);
}

function asCniError(thrown: unknown): CniError {
  if (thrown instanceof CniError) return thrown;
  const msg = thrown instanceof Error ? thrown.message : `non-error thrown: ${String(thrown)}`;
  return new CniError(CniCode.Internal, `internal error in ambient-cni: ${msg}`, {
    details: 'this is a bug; the stack trace is in the plugin log on stderr',
    cause: thrown,
  });
}

function print(io: RunIO, value: JsonObject): void {
  try {
    io.stdout(`${JSON.stringify(value)}\n`);
  } catch {
    // The runtime went away; the exit code still reports the outcome.
  }
}

/** Reads stdin to EOF, stopping one byte past `limit` so run() can reject oversized input without buffering it all. */
async function readStdin(limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin) {
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(String(chunk));
    chunks.push(buf);
    size += buf.length;
    if (size > limit) break;
  }
  return Buffer.concat(chunks);
}

function isMainModule(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return realpathSync(entry) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/** The process shell: real env, stdin and stdout. The module's own entry and the standalone executable both call it. */
export async function runAsProcess(): Promise<void> {
  const io: RunIO = {
    env: process.env,
    stdin: '',
    stdout: (s) => void process.stdout.write(s),
    // Synchronous, so every log line is out before the runtime reads our exit status.
    stderr: (s) => void writeSync(2, s),
  };
  let stdin: Buffer | undefined;
  try {
    stdin = await readStdin(MAX_STDIN_BYTES);
  } catch (err) {
    const e = new CniError(CniCode.IoFailure, 'reading the network configuration from stdin failed', { cause: err });
    process.exitCode = report(io, createPluginLogger(io.stderr).log, e, PREFERRED_VERSION);
  }
  if (stdin) process.exitCode = await run({ ...io, stdin });
}

// No top-level await: the standalone build bundles this module as CommonJS.
if (isMainModule()) void runAsProcess();
