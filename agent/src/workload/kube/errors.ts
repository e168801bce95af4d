// The one error of the Kubernetes API client (AMB_ERR_KUBE_API): credentials that do not load, an unreachable server,
// a non-2xx status (carried in `status`), a response that is not the JSON expected.
import { AmbientError } from '../../errors.js';

export class KubeApiError extends AmbientError<'AMB_ERR_KUBE_API'> {
  constructor(msg: string, readonly status?: number, options: { cause?: unknown } = {}) {
    super('AMB_ERR_KUBE_API', msg, options);
  }
}
