// The one error type that carries a CNI code to main.ts. The codes themselves live in cni-codes.ts (re-exported here
// for the commands); CniError is an AmbientError with code AMB_ERR_CNI and the CNI code in `cniCode`.
import { AmbientError } from '../../agent/src/errors.js';
import { CniCode } from './cni-codes.js';

export { CniCode };

/**
 * An error whose CNI code the runtime should see. main.ts passes it through unchanged; every other error becomes
 * CniCode.Internal. `cniCode` may also be a code relayed verbatim from the agent.
 */
export class CniError extends AmbientError<'AMB_ERR_CNI'> {
  readonly details: string | undefined;

  constructor(
    readonly cniCode: CniCode,
    msg: string,
    opts: { details?: string; cause?: unknown } = {},
  ) {
    super('AMB_ERR_CNI', msg, opts);
    this.details = opts.details;
  }
}
