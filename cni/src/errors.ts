// The CNI error codes this plugin reports and the one error type that carries a code to main.ts.
// Only spec-defined codes live here (CNI 1.1.0 "Error" section) plus 999 for bugs; no plugin-private codes.

/** Well-known CNI error codes (spec 1.1.0, section 5 "Error"). */
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
  /** A bug in the plugin: anything that is not a CniError ends up here. */
  Internal = 999,
}

/**
 * An error whose code the runtime should see. main.ts passes it through unchanged;
 * every other error becomes CniCode.Internal. `code` may also be a code relayed verbatim from the agent.
 */
export class CniError extends Error {
  readonly details: string | undefined;

  constructor(
    readonly code: CniCode,
    msg: string,
    opts: { details?: string; cause?: unknown } = {},
  ) {
    super(msg, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'CniError';
    this.details = opts.details;
  }
}
