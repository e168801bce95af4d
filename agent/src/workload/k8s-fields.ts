// Reading fields of Kubernetes-shaped objects: the parse error every workload object throws, and the small checks
// shared by the Pod, Namespace, Service and EndpointSlice parsers. Pure.
import { AmbientError } from '../errors.js';

export class WorkloadParseError extends AmbientError<'AMB_ERR_BAD_WORKLOAD'> {
  constructor(msg: string) {
    super('AMB_ERR_BAD_WORKLOAD', msg);
  }
}

export type Obj = Record<string, unknown>;

export function isObj(v: unknown): v is Obj {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** How a reader reports a bad field: throws, with the field's path and what is wrong with it. */
export type FieldFail = (field: string, msg: string) => never;

const workloadFail: FieldFail = (field, msg) => {
  throw new WorkloadParseError(`${field} ${msg}`);
};

/**
 * A map of strings (labels, annotations, selectors, a policy's matchLabels); absent is empty. `fail` reports a bad
 * field (a WorkloadParseError by default; the policy parsers pass their own).
 */
export function stringMap(v: unknown, where: string, fail: FieldFail = workloadFail): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) fail(where, 'must be a mapping');
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string') fail(`${where}.${k}`, 'must be a string');
    // Not a valid label key, and `out[k] =` would set the prototype instead: the entry would vanish, and a selector
    // without it select more (a policy the whole namespace).
    if (k === '__proto__') fail(`${where}.__proto__`, 'is not a valid key');
    out[k] = val;
  }
  return out;
}
