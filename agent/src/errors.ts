// Errors the agent reports to the plugin: a stable code for people and scripts, and the CNI code the plugin must return.
// Retryable conditions use CNI code 11 (try again later) so the runtime retries instead of treating them as bugs.

export const CNI_TRY_AGAIN_LATER = 11;
export const CNI_INVALID_CONFIG = 7;
/** Plugin-specific CNI codes (the spec leaves 100 and above to plugins). */
export const CNI_ENROLMENT_FAILED = 100;
export const CNI_NETNS_GONE = 101;
export const CNI_NOT_ENROLLED = 102;

export type AgentErrorCode =
  | 'AMB_ERR_POD_UNKNOWN'
  | 'AMB_ERR_NOT_READY'
  | 'AMB_ERR_NETNS_GONE'
  | 'AMB_ERR_ENROL_FAILED'
  | 'AMB_ERR_NOT_ENROLLED'
  | 'AMB_ERR_BAD_EVENT';

const CNI_CODES: Record<AgentErrorCode, number> = {
  AMB_ERR_POD_UNKNOWN: CNI_TRY_AGAIN_LATER,
  AMB_ERR_NOT_READY: CNI_TRY_AGAIN_LATER,
  AMB_ERR_NETNS_GONE: CNI_NETNS_GONE,
  AMB_ERR_ENROL_FAILED: CNI_ENROLMENT_FAILED,
  AMB_ERR_NOT_ENROLLED: CNI_NOT_ENROLLED,
  AMB_ERR_BAD_EVENT: CNI_INVALID_CONFIG,
};

export class AgentError extends Error {
  readonly cniCode: number;
  readonly details: string | undefined;
  constructor(readonly code: AgentErrorCode, msg: string, opts: { details?: string; cause?: unknown } = {}) {
    super(msg, { cause: opts.cause });
    this.name = 'AgentError';
    this.cniCode = CNI_CODES[code];
    this.details = opts.details ?? (opts.cause instanceof Error ? describe(opts.cause) : undefined);
  }
}

/** The full message of an error and its causes, including every member of an AggregateError. */
export function describe(err: unknown): string {
  if (err instanceof AggregateError) return [err.message, ...err.errors.map(describe)].join('; ');
  if (err instanceof Error) return err.cause ? `${err.message}: ${describe(err.cause)}` : err.message;
  return String(err);
}
