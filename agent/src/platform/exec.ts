// Runs node tools (iptables-restore, nft, ipset, ip) in the agent's namespace or inside a pod's, via nsenter.
// The one place that spawns them; failures carry the tool's stderr so logs and CNI errors show the real cause.
import { accessSync, constants } from 'node:fs';
import { execa } from 'execa';
import { AmbientError } from '../errors.js';

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
  /** Path of a network namespace to run in (nsenter --net); undefined = the agent's own. */
  netns?: string;
  input?: string;
  timeoutMs?: number;
}

/** Runs a tool and returns its stdout; throws ToolError with stderr on failure. */
export async function runTool(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  const [file, argv] = opts.netns ? [systemTool('nsenter'), [`--net=${opts.netns}`, '--', systemTool(cmd), ...args]] : [systemTool(cmd), args];
  const shown = [cmd, ...args].join(' ');
  try {
    const r = await execa(file, argv, {
      input: opts.input ?? '',
      timeout: opts.timeoutMs ?? 15_000,
      reject: false,
      stripFinalNewline: false,
    });
    if (r.exitCode !== 0 || r.failed) {
      throw new ToolError(shown, r.stderr || r.shortMessage || '', r.exitCode);
    }
    return r.stdout;
  } catch (err) {
    if (err instanceof ToolError) throw err;
    throw new ToolError(shown, (err as Error).message, undefined, { cause: err });
  }
}
