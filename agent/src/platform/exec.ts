// Runs node tools (iptables-restore, nft, ipset, ip) in the agent's namespace or inside a pod's, via nsenter.
// The one place that spawns them; failures carry the tool's stderr so logs and CNI errors show the real cause.
import { execa } from 'execa';

export class ToolError extends Error {
  readonly code = 'AMB_ERR_TOOL';
  constructor(readonly command: string, readonly stderr: string, readonly exitCode: number | undefined, options?: { cause?: unknown }) {
    super(`${command} failed${exitCode === undefined ? '' : ` (exit ${exitCode})`}: ${stderr.trim() || 'no output'}`, options);
    this.name = 'ToolError';
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
  const [file, argv] = opts.netns ? ['nsenter', [`--net=${opts.netns}`, '--', cmd, ...args]] : [cmd, args];
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
