// The one table of CNI error codes: the spec's well-known codes, this plugin's own (100 and up), and the CNI code each
// agent error answers with. The plugin (CniError), the agent (AgentError), the event server and the C shim use only these.

/** CNI error codes: spec 1.1.0 section 5 "Error" (1-99), plugin-specific codes (100 and up, left to plugins), and 999. */
export enum CniCode {
  IncompatibleVersion = 1,
  UnsupportedField = 2,
  UnknownContainer = 3,
  InvalidEnv = 4,
  IoFailure = 5,
  DecodingFailure = 6,
  InvalidNetworkConfig = 7,
  TryAgainLater = 11,
  /** STATUS: the plugin cannot service ADD requests. */
  PluginNotAvailable = 50,
  /** STATUS: as 50, and existing containers may have limited connectivity. */
  PluginNotAvailableLimitedConnectivity = 51,
  /** Plugin-specific: rules or listeners could not be installed in the pod. */
  EnrolmentFailed = 100,
  /** Plugin-specific: the pod's network namespace does not exist. */
  NetnsGone = 101,
  /** Plugin-specific: CHECK found a pod that should be captured but is not. */
  NotEnrolled = 102,
  /** A bug: in the plugin (anything that is not a CniError), in the agent, or an agent reply nobody can read. */
  Internal = 999,
}

/**
 * The CNI code each agent error code of a plugin event answers with. Retryable conditions use TryAgainLater, so the
 * runtime retries instead of treating them as bugs.
 */
export const AGENT_ERROR_CNI_CODES = {
  AMB_ERR_POD_UNKNOWN: CniCode.TryAgainLater,
  AMB_ERR_NOT_READY: CniCode.TryAgainLater,
  AMB_ERR_NETNS_GONE: CniCode.NetnsGone,
  AMB_ERR_ENROL_FAILED: CniCode.EnrolmentFailed,
  AMB_ERR_NOT_ENROLLED: CniCode.NotEnrolled,
  AMB_ERR_BAD_EVENT: CniCode.InvalidNetworkConfig,
} as const satisfies Record<string, CniCode>;

/** The codes an agent answers a plugin event with (AgentError). */
export type AgentErrorCode = keyof typeof AGENT_ERROR_CNI_CODES;
