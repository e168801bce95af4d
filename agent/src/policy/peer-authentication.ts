// PeerAuthentication (security.istio.io/v1): parsing at the boundary, and the pure resolution of a pod's mTLS mode.
// Precedence as in Istio: workload selector > namespace-wide > mesh-wide (root namespace); port-level modes override;
// UNSET inherits from the next level; nothing at all means PERMISSIVE.
import { AmbientError } from '../errors.js';
import { isObj, stringMap, type Obj } from '../workload/k8s-fields.js';

export type MtlsMode = 'UNSET' | 'DISABLE' | 'PERMISSIVE' | 'STRICT';
const MODES: readonly MtlsMode[] = ['UNSET', 'DISABLE', 'PERMISSIVE', 'STRICT'];

/** Istio's default root namespace: policies there without a selector apply mesh-wide. */
export const DEFAULT_ROOT_NAMESPACE = 'istio-system';

export interface PeerAuthentication {
  namespace: string;
  name: string;
  /** undefined: no selector (namespace- or mesh-wide). */
  matchLabels: Record<string, string> | undefined;
  mode: MtlsMode;
  portModes: Map<number, MtlsMode>;
  /**
   * Set on a placeholder for an object that failed to parse and has no previous good version: the parse error. It
   * fails closed: plaintext is refused (as STRICT) everywhere in its scope, whatever the other policies say.
   */
  malformed?: string;
}

export class PolicyParseError extends AmbientError<'AMB_ERR_BAD_POLICY'> {
  constructor(msg: string) {
    super('AMB_ERR_BAD_POLICY', msg);
  }
}


function mode(v: unknown, where: string): MtlsMode {
  if (v === undefined || v === null) return 'UNSET';
  if (typeof v !== 'string' || !MODES.includes(v as MtlsMode)) {
    throw new PolicyParseError(`${where} must be one of ${MODES.join(', ')}, got ${JSON.stringify(v)}`);
  }
  return v as MtlsMode;
}

/** Converts a PeerAuthentication object; errors name the object and the field. */
export function parsePeerAuthentication(doc: Obj): PeerAuthentication {
  const meta = isObj(doc.metadata) ? doc.metadata : {};
  const name = typeof meta.name === 'string' ? meta.name : '';
  const namespace = typeof meta.namespace === 'string' && meta.namespace ? meta.namespace : 'default';
  const where = `PeerAuthentication ${namespace}/${name || '(unnamed)'}`;
  if (!name) throw new PolicyParseError(`${where}: metadata.name must be a non-empty string`);
  const spec = doc.spec === undefined ? {} : doc.spec;
  if (!isObj(spec)) throw new PolicyParseError(`${where}: spec must be a mapping`);
  let matchLabels: Record<string, string> | undefined;
  if (spec.selector !== undefined && spec.selector !== null) {
    if (!isObj(spec.selector)) throw new PolicyParseError(`${where}: spec.selector must be a mapping`);
    matchLabels = stringMap(spec.selector.matchLabels, 'spec.selector.matchLabels', (field, msg) => {
      throw new PolicyParseError(`${where}: ${field} ${msg}`);
    });
  }
  const mtls = spec.mtls ?? {};
  if (!isObj(mtls)) throw new PolicyParseError(`${where}: spec.mtls must be a mapping`);
  const portModes = new Map<number, MtlsMode>();
  if (spec.portLevelMtls !== undefined) {
    if (!isObj(spec.portLevelMtls)) throw new PolicyParseError(`${where}: spec.portLevelMtls must be a mapping`);
    if (!matchLabels) throw new PolicyParseError(`${where}: spec.portLevelMtls needs a spec.selector (as in Istio)`);
    for (const [p, v] of Object.entries(spec.portLevelMtls)) {
      const port = Number(p);
      if (!Number.isInteger(port) || port < 1 || port > 65535) throw new PolicyParseError(`${where}: spec.portLevelMtls key ${JSON.stringify(p)} is not a port`);
      if (!isObj(v)) throw new PolicyParseError(`${where}: spec.portLevelMtls.${p} must be a mapping`);
      portModes.set(port, mode(v.mode, `${where}: spec.portLevelMtls.${p}.mode`));
    }
  }
  return { namespace, name, matchLabels, mode: mode(mtls.mode, `${where}: spec.mtls.mode`), portModes };
}

/**
 * The scope of a policy object as far as it can be read, for a placeholder of one that failed to parse: its namespace
 * (`default` when absent), its name, and `spec.selector.matchLabels` when that part is a mapping of strings, else
 * undefined (the whole namespace; in the root namespace, the whole mesh). Pure; never throws.
 */
export function readableScope(doc: unknown): { namespace: string; name: string; matchLabels: Record<string, string> | undefined } {
  const d = isObj(doc) ? doc : {};
  const meta = isObj(d.metadata) ? d.metadata : {};
  const namespace = typeof meta.namespace === 'string' && meta.namespace ? meta.namespace : 'default';
  const name = typeof meta.name === 'string' && meta.name ? meta.name : '(unnamed)';
  const spec = isObj(d.spec) ? d.spec : {};
  const ml = isObj(spec.selector) ? spec.selector.matchLabels : undefined;
  const matchLabels = isObj(ml) && Object.keys(ml).length > 0 && Object.values(ml).every((v) => typeof v === 'string')
    ? { ...(ml as Record<string, string>) } : undefined;
  return { namespace, name, matchLabels };
}

/** The parse error without the `Kind ns/name: ` prefix the parsers put first (the placeholder names the object). */
export function placeholderError(error: string): string {
  return error.replace(/^(?:AuthorizationPolicy|PeerAuthentication) [^\s:]+: /, '');
}

/** A placeholder for a PeerAuthentication that failed to parse (no previous good version): STRICT in its scope. Pure. */
export function malformedPeerAuthentication(doc: unknown, error: string): PeerAuthentication {
  const { namespace, name, matchLabels } = readableScope(doc);
  return { namespace, name, matchLabels, mode: 'STRICT', portModes: new Map(), malformed: placeholderError(error) };
}

/** Whether a malformed placeholder's scope covers the pod (its namespace, or the root namespace: mesh-wide). */
export function malformedCovers(
  p: { namespace: string; matchLabels: Record<string, string> | undefined },
  pod: { namespace: string; labels: Record<string, string> },
  rootNamespace = DEFAULT_ROOT_NAMESPACE,
): boolean {
  if (p.namespace !== pod.namespace && p.namespace !== rootNamespace) return false;
  return p.matchLabels === undefined || Object.entries(p.matchLabels).every(([k, v]) => pod.labels[k] === v);
}

/** The malformed PeerAuthentications whose scope covers the pod, by name. Pure. */
export function malformedPeerAuthenticationsFor(
  policies: readonly PeerAuthentication[],
  pod: { namespace: string; labels: Record<string, string> },
  rootNamespace = DEFAULT_ROOT_NAMESPACE,
): PeerAuthentication[] {
  return policies.filter((p) => p.malformed !== undefined && malformedCovers(p, pod, rootNamespace))
    .sort((a, b) => `${a.namespace}/${a.name}`.localeCompare(`${b.namespace}/${b.name}`));
}

const selects = (pa: PeerAuthentication, labels: Record<string, string>): boolean =>
  pa.matchLabels !== undefined && Object.entries(pa.matchLabels).every(([k, v]) => labels[k] === v);

/** Oldest-name-first tie-break for several matching policies at one level (deterministic). */
const byName = (a: PeerAuthentication, b: PeerAuthentication): number => a.name.localeCompare(b.name);

/** The effective mode for traffic to `port` of a pod (namespace + labels). Pure. */
export function effectiveMtlsMode(
  policies: readonly PeerAuthentication[],
  pod: { namespace: string; labels: Record<string, string> },
  port: number,
  rootNamespace = DEFAULT_ROOT_NAMESPACE,
): Exclude<MtlsMode, 'UNSET'> {
  // Fail closed: a PeerAuthentication that cannot be parsed refuses plaintext in its scope, over every other level.
  if (malformedPeerAuthenticationsFor(policies, pod, rootNamespace).length > 0) return 'STRICT';
  const good = policies.filter((p) => p.malformed === undefined);
  const workload = good.filter((p) => p.namespace === pod.namespace && selects(p, pod.labels)).sort(byName)[0];
  const namespace = good.filter((p) => p.namespace === pod.namespace && p.matchLabels === undefined).sort(byName)[0];
  const mesh = good.filter((p) => p.namespace === rootNamespace && p.matchLabels === undefined).sort(byName)[0];
  for (const m of [workload?.portModes.get(port), workload?.mode, namespace?.mode, mesh?.mode]) {
    if (m && m !== 'UNSET') return m;
  }
  return 'PERMISSIVE';
}
