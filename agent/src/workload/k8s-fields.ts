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

/** A map of strings (labels, annotations, selectors); absent is empty. */
export function stringMap(v: unknown, where: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObj(v)) throw new WorkloadParseError(`${where} must be a mapping`);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) {
    if (typeof val !== 'string') throw new WorkloadParseError(`${where}.${k} must be a string`);
    // Not a valid label key, and `out[k] =` would set the prototype instead: the entry would vanish, widening a selector.
    if (k === '__proto__') throw new WorkloadParseError(`${where}.__proto__ is not a valid key`);
    out[k] = val;
  }
  return out;
}
