// The error family of the agent and the plugin: AmbientError with a stable `code` from one documented list (README,
// "Error codes"; test/unit/error-codes.test.ts checks it), AgentError for plugin events (its CNI code from cni-codes).
import { AGENT_ERROR_CNI_CODES, type AgentErrorCode, type CniCode } from '../../cni/src/cni-codes.js';

export type { AgentErrorCode };

/** Every code an AmbientError (or a log line) can carry. Stable: scripts and people match on them; never on messages. */
export const AMBIENT_ERROR_CODES = [
  // Plugin events, answered to the plugin with the CNI code from AGENT_ERROR_CNI_CODES.
  'AMB_ERR_POD_UNKNOWN',
  'AMB_ERR_NOT_READY',
  'AMB_ERR_NETNS_GONE',
  'AMB_ERR_ENROL_FAILED',
  'AMB_ERR_NOT_ENROLLED',
  'AMB_ERR_BAD_EVENT',
  // The plugin (cni/src): its failure as reported to the runtime, and its view of the agent.
  'AMB_ERR_CNI',
  'AMB_ERR_AGENT_UNREACHABLE',
  'AMB_ERR_AGENT_REPLY',
  'AMB_ERR_AGENT_PROTOCOL',
  // The event server, the CLI and the agent's configuration.
  'AMB_ERR_BAD_REQUEST',
  'AMB_ERR_CLIENT_GONE',
  'AMB_ERR_AGENT_DOWN',
  'AMB_ERR_REQUEST',
  'AMB_ERR_CONFIG',
  // Upgrades: one agent taking over from another on the same state dir.
  'AMB_ERR_TAKEOVER',
  // Installing the plugin on the node.
  'AMB_ERR_CNI_CONFIG_MALFORMED',
  'AMB_ERR_CNI_NO_PRIMARY',
  'AMB_ERR_CNI_PLUGIN_SETTINGS',
  'AMB_ERR_CNI_INSTALL_IO',
  'AMB_ERR_CNI_CONFIG_FIGHT',
  // Workloads and policies.
  'AMB_ERR_BAD_WORKLOAD',
  'AMB_ERR_BAD_POLICY',
  'AMB_ERR_KUBE_API',
  // Identity.
  'AMB_ERR_SPIFFE_ID',
  'AMB_ERR_CA_UNAVAILABLE',
  'AMB_ERR_CA_REJECTED',
  'AMB_ERR_CA_BAD_RESPONSE',
  'AMB_ERR_CA_CONFIG',
  'AMB_ERR_NO_VALID_CERT',
  'AMB_ERR_IDENTITY_DROPPED',
  // The platform: tools, system calls, eBPF.
  'AMB_ERR_TOOL',
  'AMB_ERR_SYSCALL',
  'AMB_ERR_BPF',
  'AMB_ERR_BPF_UNAVAILABLE',
  'AMB_ERR_EBPF_UNAVAILABLE',
  'AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE',
  // HBONE and the forwarder.
  'AMB_ERR_HBONE_CONNECT',
  'AMB_ERR_HBONE_STATUS',
  'AMB_ERR_PEER_IDENTITY',
  'AMB_ERR_KEEPALIVE',
  'AMB_ERR_NATIVE_LIB',
  'AMB_ERR_NATIVE_TLS',
  'AMB_ERR_DENIED',
] as const;

export type AmbientErrorCode = (typeof AMBIENT_ERROR_CODES)[number];

/**
 * The base of every error the agent and the plugin define: a stable code, a message that names a likely cause, and the
 * cause kept (never rebuilt from its message). Subclasses narrow `C` to their code(s); one-off errors use it directly.
 */
export class AmbientError<C extends AmbientErrorCode = AmbientErrorCode> extends Error {
  constructor(readonly code: C, msg: string, opts: { cause?: unknown } = {}) {
    super(msg, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
  }
}

/** A plugin event failed: `cniCode` is what the plugin reports to the runtime, `details` what it adds. */
export class AgentError extends AmbientError<AgentErrorCode> {
  readonly cniCode: CniCode;
  readonly details: string | undefined;
  constructor(code: AgentErrorCode, msg: string, opts: { details?: string; cause?: unknown } = {}) {
    super(code, msg, opts);
    this.cniCode = AGENT_ERROR_CNI_CODES[code];
    this.details = opts.details ?? (opts.cause instanceof Error ? describe(opts.cause) : undefined);
  }
}

/** The full message of an error and its causes, including every member of an AggregateError. */
export function describe(err: unknown): string {
  if (err instanceof AggregateError) return [err.message, ...err.errors.map(describe)].join('; ');
  if (err instanceof Error) return err.cause ? `${err.message}: ${describe(err.cause)}` : err.message;
  return String(err);
}

/**
 * Waits for every promise to settle, then throws the first rejection (an AggregateError of all when several failed):
 * unlike Promise.all, nothing is still running once the caller's roll-back starts.
 */
export async function settleAll(work: readonly Promise<unknown>[], message: string): Promise<void> {
  // The same error once, however many steps waited on the step that threw it.
  const failed = [...new Set((await Promise.allSettled(work)).flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : [])))];
  if (failed.length === 1) throw failed[0];
  if (failed.length > 1) throw new AggregateError(failed, message);
}
