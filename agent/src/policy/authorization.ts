// AuthorizationPolicy (security.istio.io/v1) for L4: parsing at the boundary (errors name the object and field),
// then ztunnel's pure evaluation: a matching DENY denies; no ALLOW allows; a matching ALLOW allows; otherwise deny.
import { formatIp, parseIp } from '../protocol/address.js';
import { isObj, stringMap, type Obj } from '../workload/k8s-fields.js';
import { DEFAULT_ROOT_NAMESPACE, placeholderError, PolicyParseError, readableScope } from './peer-authentication.js';

export type AuthzAction = 'ALLOW' | 'DENY';
/** Istio string match: `*` = presence (any non-empty), `*x` = suffix, `x*` = prefix, else exact. */
export interface StringMatch { kind: 'exact' | 'prefix' | 'suffix' | 'presence'; value: string }
/** An IPv4/IPv6 network; a single address is a /32 or /128. */
export interface Cidr { family: 4 | 6; network: bigint; prefix: number; text: string }
/** One `from[].source`; an empty array means the field is not set. L7-only fields are not kept. */
export interface SourceMatch {
  principals: StringMatch[]; notPrincipals: StringMatch[];
  namespaces: StringMatch[]; notNamespaces: StringMatch[];
  /** `ns/sa` pairs (Istio's `serviceAccounts`; a bare `sa` means the policy's namespace). */
  serviceAccounts: string[]; notServiceAccounts: string[];
  ipBlocks: Cidr[]; notIpBlocks: Cidr[];
}
/** One `to[].operation`; only the L4 fields are kept. */
export interface OperationMatch { ports: number[]; notPorts: number[] }
/** One `when[]` condition on an L4 key; `values` OR-ed, `notValues` must all miss. */
export type Condition =
  | { key: 'source.ip' | 'destination.ip'; values: Cidr[]; notValues: Cidr[] }
  | { key: 'destination.port'; values: number[]; notValues: number[] }
  | { key: 'source.principal' | 'source.namespace'; values: StringMatch[]; notValues: StringMatch[] };
export interface AuthzRule {
  from: SourceMatch[];
  to: OperationMatch[];
  when: Condition[];
  /** An ALLOW rule that uses L7-only fields: ztunnel never matches it. */
  neverMatches: boolean;
}
export interface AuthorizationPolicy {
  namespace: string;
  name: string;
  action: AuthzAction;
  /** `istio.io/dry-run: "true"`: evaluated and reported, never enforced. */
  dryRun: boolean;
  /** undefined: no selector (namespace-wide, or mesh-wide in the root namespace). */
  matchLabels: Record<string, string> | undefined;
  /** Empty: the policy matches nothing. A rule `{}` matches everything. */
  rules: AuthzRule[];
  /** Uses `targetRef(s)`: it belongs to waypoints, so ztunnel (and authorize()) ignores it. */
  waypointOnly: boolean;
  /** One line per L7-only field (and per ignored targetRef), naming the field. */
  warnings: string[];
  /**
   * Set on a placeholder for an object that failed to parse and has no previous good version: the parse error. It fails
   * closed: a DENY of everything in its scope (the namespace, or the selector when that part parsed; the root namespace:
   * mesh-wide) until the object is fixed or deleted.
   */
  malformed?: string;
}


const L4_WHEN_KEYS = ['source.ip', 'source.namespace', 'source.principal', 'destination.ip', 'destination.port'] as const;
/** Istio's other `when` keys: valid, but only a waypoint/sidecar can evaluate them. */
const L7_WHEN_KEY = /^(remote\.ip|request\.auth\.(principal|audiences|presenter)|request\.auth\.claims\[.+\]|request\.headers\[.+\]|connection\.sni|experimental\.envoy\.filters\..+)$/;
const SOURCE_L4 = ['principals', 'notPrincipals', 'namespaces', 'notNamespaces', 'serviceAccounts', 'notServiceAccounts', 'ipBlocks', 'notIpBlocks'];
const SOURCE_L7 = ['requestPrincipals', 'notRequestPrincipals', 'remoteIpBlocks', 'notRemoteIpBlocks'];
const OP_L4 = ['ports', 'notPorts'];
const OP_L7 = ['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'];
const SPEC_KEYS = ['selector', 'action', 'rules', 'provider', 'targetRef', 'targetRefs'];

function cidrContains(c: Cidr, ip: { family: 4 | 6; value: bigint } | undefined): boolean {
  if (!ip || ip.family !== c.family) return false;
  const shift = BigInt((c.family === 4 ? 32 : 128) - c.prefix);
  return ip.value >> shift === c.network >> shift;
}

export function stringMatches(m: StringMatch, v: string | undefined): boolean {
  if (v === undefined || v === '') return false;
  switch (m.kind) {
    case 'presence': return true;
    case 'prefix': return v.startsWith(m.value);
    case 'suffix': return v.endsWith(m.value);
    default: return v === m.value;
  }
}

class Parser {
  readonly warnings: string[] = [];
  constructor(readonly where: string, readonly namespace: string) {}

  fail(field: string, msg: string): never {
    throw new PolicyParseError(`${this.where}: ${field} ${msg}`);
  }

  only(o: Obj, allowed: readonly string[], field: string): void {
    for (const k of Object.keys(o)) if (!allowed.includes(k)) this.fail(`${field}.${k}`, `is not a known field (expected one of ${allowed.join(', ')})`);
  }

  /** A list of non-empty strings (absent/null: []). */
  strings(v: unknown, field: string): string[] {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) this.fail(field, 'must be a list of strings');
    return v.map((s, i) => {
      if (typeof s !== 'string' || s === '') this.fail(`${field}[${i}]`, `must be a non-empty string, got ${JSON.stringify(s)}`);
      return s;
    });
  }

  matches(v: unknown, field: string): StringMatch[] {
    return this.strings(v, field).map((s): StringMatch => {
      if (s === '*') return { kind: 'presence', value: '' };
      if (s.startsWith('*')) return { kind: 'suffix', value: s.slice(1) };
      if (s.endsWith('*')) return { kind: 'prefix', value: s.slice(0, -1) };
      return { kind: 'exact', value: s };
    });
  }

  cidrs(v: unknown, field: string): Cidr[] {
    return this.strings(v, field).map((s, i) => {
      const [addr = '', len, extra] = s.split('/');
      // As ztunnel: the network keeps the family it is written in, and families never mix. `::ffff:a.b.c.d/n` is an IPv6
      // network; peers are canonical (an IPv4-mapped peer is its IPv4 address), so with n >= 96 it matches no peer.
      const ip = parseIp(addr, { keepMapped: true });
      const max = ip?.family === 4 ? 32 : 128;
      const prefix = len === undefined ? max : /^\d{1,3}$/.test(len) ? Number(len) : NaN;
      if (!ip || extra !== undefined || !(prefix >= 0 && prefix <= max)) this.fail(`${field}[${i}]`, `is not an IP address or CIDR: ${JSON.stringify(s)}`);
      const shift = BigInt(max - prefix);
      const network = (ip.value >> shift) << shift;
      if (ip.family === 6 && prefix >= 96 && network >> 32n === 0xffffn) {
        this.warnings.push(`${this.where}: ${field}[${i}] ${s} is an IPv4-mapped IPv6 network: it matches no peer (as in ztunnel, an IPv4 peer is matched by IPv4 networks only); write ${formatIp({ family: 4, value: network & 0xffffffffn })}/${prefix - 96} instead`);
      }
      return { family: ip.family, network, prefix, text: s };
    });
  }

  ports(v: unknown, field: string): number[] {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) this.fail(field, 'must be a list of ports');
    return v.map((p, i) => {
      const n = typeof p === 'number' ? p : typeof p === 'string' && /^\d+$/.test(p) ? Number(p) : NaN;
      if (!Number.isInteger(n) || n < 1 || n > 65535) this.fail(`${field}[${i}]`, `must be a port 1..65535, got ${JSON.stringify(p)}`);
      return n;
    });
  }

  serviceAccounts(v: unknown, field: string): string[] {
    return this.strings(v, field).map((s, i) => {
      const parts = s.split('/');
      if (parts.length > 2 || parts.some((p) => !p)) this.fail(`${field}[${i}]`, `must be "namespace/serviceaccount", got ${JSON.stringify(s)}`);
      return parts.length === 1 ? `${this.namespace}/${s}` : s;
    });
  }

  /** Records the L7-only fields set in `o`; returns true when any is. */
  l7(o: Obj, keys: readonly string[], field: string, action: AuthzAction): boolean {
    const used = keys.filter((k) => o[k] !== undefined && o[k] !== null);
    for (const k of used) {
      this.warnings.push(`${this.where}: ${field}.${k} is L7-only and ztunnel cannot enforce it: ` +
        (action === 'ALLOW' ? 'this ALLOW rule never matches' : 'the field is ignored, so this DENY rule matches more'));
    }
    return used.length > 0;
  }

  list(v: unknown, field: string): unknown[] | undefined {
    if (v === undefined || v === null) return undefined;
    if (!Array.isArray(v)) this.fail(field, 'must be a list');
    if (v.length === 0) this.fail(field, 'must not be empty (omit it instead)');
    return v;
  }

  source(v: unknown, field: string, action: AuthzAction): { m: SourceMatch; l7: boolean } {
    if (!isObj(v)) this.fail(field, 'must be a mapping');
    const src = v.source;
    if (!isObj(src) || Object.keys(src).length === 0) this.fail(`${field}.source`, 'must be a non-empty mapping');
    this.only(v, ['source'], field);
    this.only(src, [...SOURCE_L4, ...SOURCE_L7], `${field}.source`);
    const f = `${field}.source`;
    const m: SourceMatch = {
      principals: this.matches(src.principals, `${f}.principals`), notPrincipals: this.matches(src.notPrincipals, `${f}.notPrincipals`),
      namespaces: this.matches(src.namespaces, `${f}.namespaces`), notNamespaces: this.matches(src.notNamespaces, `${f}.notNamespaces`),
      serviceAccounts: this.serviceAccounts(src.serviceAccounts, `${f}.serviceAccounts`),
      notServiceAccounts: this.serviceAccounts(src.notServiceAccounts, `${f}.notServiceAccounts`),
      ipBlocks: this.cidrs(src.ipBlocks, `${f}.ipBlocks`), notIpBlocks: this.cidrs(src.notIpBlocks, `${f}.notIpBlocks`),
    };
    for (const k of SOURCE_L7) this.strings(src[k], `${f}.${k}`);
    return { m, l7: this.l7(src, SOURCE_L7, f, action) };
  }

  operation(v: unknown, field: string, action: AuthzAction): { m: OperationMatch; l7: boolean } {
    if (!isObj(v)) this.fail(field, 'must be a mapping');
    const op = v.operation;
    if (!isObj(op) || Object.keys(op).length === 0) this.fail(`${field}.operation`, 'must be a non-empty mapping');
    this.only(v, ['operation'], field);
    const f = `${field}.operation`;
    this.only(op, [...OP_L4, ...OP_L7], f);
    for (const k of OP_L7) this.strings(op[k], `${f}.${k}`);
    return { m: { ports: this.ports(op.ports, `${f}.ports`), notPorts: this.ports(op.notPorts, `${f}.notPorts`) }, l7: this.l7(op, OP_L7, f, action) };
  }

  condition(v: unknown, field: string, action: AuthzAction): { c?: Condition; l7: boolean } {
    if (!isObj(v)) this.fail(field, 'must be a mapping');
    this.only(v, ['key', 'values', 'notValues'], field);
    const key = v.key;
    if (typeof key !== 'string' || !key) this.fail(`${field}.key`, 'must be a non-empty string');
    const vals = this.strings(v.values, `${field}.values`);
    const nots = this.strings(v.notValues, `${field}.notValues`);
    if (vals.length + nots.length === 0) this.fail(field, `needs values or notValues for key ${key}`);
    if (L7_WHEN_KEY.test(key)) {
      this.warnings.push(`${this.where}: ${field} key ${key} is L7-only and ztunnel cannot enforce it: ` +
        (action === 'ALLOW' ? 'this ALLOW rule never matches' : 'the condition is ignored, so this DENY rule matches more'));
      return { l7: true };
    }
    const k = key as (typeof L4_WHEN_KEYS)[number];
    if (!L4_WHEN_KEYS.includes(k)) this.fail(`${field}.key`, `is not a known attribute: ${JSON.stringify(key)}`);
    const conv = <T>(fn: (x: unknown, f: string) => T): [T, T] => [fn(v.values, `${field}.values`), fn(v.notValues, `${field}.notValues`)];
    if (k === 'source.ip' || k === 'destination.ip') { const [a, b] = conv((x, f) => this.cidrs(x, f)); return { c: { key: k, values: a, notValues: b }, l7: false }; }
    if (k === 'destination.port') { const [a, b] = conv((x, f) => this.ports(x, f)); return { c: { key: k, values: a, notValues: b }, l7: false }; }
    const [a, b] = conv((x, f) => this.matches(x, f));
    return { c: { key: k, values: a, notValues: b }, l7: false };
  }

  rule(v: unknown, field: string, action: AuthzAction): AuthzRule {
    if (!isObj(v)) this.fail(field, 'must be a mapping');
    this.only(v, ['from', 'to', 'when'], field);
    let l7 = false;
    const from = (this.list(v.from, `${field}.from`) ?? []).map((s, i) => {
      const r = this.source(s, `${field}.from[${i}]`, action);
      l7 ||= r.l7;
      return r.m;
    });
    const to = (this.list(v.to, `${field}.to`) ?? []).map((o, i) => {
      const r = this.operation(o, `${field}.to[${i}]`, action);
      l7 ||= r.l7;
      return r.m;
    });
    const when: Condition[] = [];
    for (const [i, c] of (this.list(v.when, `${field}.when`) ?? []).entries()) {
      const r = this.condition(c, `${field}.when[${i}]`, action);
      l7 ||= r.l7;
      if (r.c) when.push(r.c);
    }
    return { from, to, when, neverMatches: action === 'ALLOW' && l7 };
  }
}

/** Converts an AuthorizationPolicy object; throws PolicyParseError naming the object and the field. */
export function parseAuthorizationPolicy(doc: Obj): AuthorizationPolicy {
  const meta = isObj(doc.metadata) ? doc.metadata : {};
  const name = typeof meta.name === 'string' ? meta.name : '';
  const namespace = typeof meta.namespace === 'string' && meta.namespace ? meta.namespace : 'default';
  const p: Parser = new Parser(`AuthorizationPolicy ${namespace}/${name || '(unnamed)'}`, namespace);
  if (!name) p.fail('metadata.name', 'must be a non-empty string');
  const ann: unknown = meta.annotations === undefined || meta.annotations === null ? {} : meta.annotations;
  if (!isObj(ann)) p.fail('metadata.annotations', 'must be a mapping');
  const dr = ann['istio.io/dry-run'];
  if (dr !== undefined && dr !== 'true' && dr !== 'false') p.fail('metadata.annotations["istio.io/dry-run"]', `must be "true" or "false", got ${JSON.stringify(dr)}`);
  const spec: unknown = doc.spec === undefined || doc.spec === null ? {} : doc.spec;
  if (!isObj(spec)) p.fail('spec', 'must be a mapping');
  p.only(spec, SPEC_KEYS, 'spec');
  const action = spec.action ?? 'ALLOW';
  if (action === 'CUSTOM' || action === 'AUDIT') p.fail('spec.action', `${action} is not supported for L4 enforcement (ztunnel accepts only ALLOW and DENY)`);
  if (action !== 'ALLOW' && action !== 'DENY') p.fail('spec.action', `must be ALLOW or DENY, got ${JSON.stringify(action)}`);
  if (spec.provider !== undefined) p.fail('spec.provider', 'is only valid with action CUSTOM');
  let matchLabels: Record<string, string> | undefined;
  if (spec.selector !== undefined && spec.selector !== null) {
    if (!isObj(spec.selector)) p.fail('spec.selector', 'must be a mapping');
    p.only(spec.selector, ['matchLabels'], 'spec.selector');
    matchLabels = stringMap(spec.selector.matchLabels, 'spec.selector.matchLabels', (field, msg) => p.fail(field, msg));
  }
  const waypointOnly = spec.targetRef != null || spec.targetRefs != null;
  if (waypointOnly) p.warnings.push(`${p.where}: spec.targetRef(s) attaches the policy to a waypoint; ztunnel ignores it`);
  let rules: AuthzRule[] = [];
  if (spec.rules !== undefined && spec.rules !== null) {
    if (!Array.isArray(spec.rules)) p.fail('spec.rules', 'must be a list');
    rules = spec.rules.map((r, i) => p.rule(r, `spec.rules[${i}]`, action));
  }
  return { namespace, name, action, dryRun: dr === 'true', matchLabels, rules, waypointOnly, warnings: p.warnings };
}

/**
 * A placeholder for an AuthorizationPolicy that failed to parse (no previous good version): denies everything in scope.
 * What can be read and could only make it apply less than any valid version would is kept: the `istio.io/dry-run: "true"`
 * annotation (reported, never enforced) and `spec.targetRef(s)` (a waypoint's policy, which ztunnel ignores). Pure.
 */
export function malformedAuthorizationPolicy(doc: unknown, error: string): AuthorizationPolicy {
  const { namespace, name, matchLabels } = readableScope(doc);
  const d = isObj(doc) ? doc : {};
  const meta = isObj(d.metadata) ? d.metadata : {};
  const dryRun = isObj(meta.annotations) && meta.annotations['istio.io/dry-run'] === 'true';
  const waypointOnly = isObj(d.spec) && (d.spec.targetRef != null || d.spec.targetRefs != null);
  return {
    namespace, name, action: 'DENY', dryRun, matchLabels,
    // A rule `{}` matches everything: even code that does not look at `malformed` denies.
    rules: [{ from: [], to: [], when: [], neverMatches: false }],
    waypointOnly, warnings: [], malformed: placeholderError(error),
  };
}

export interface Connection {
  destination: { namespace: string; labels: Record<string, string>; ip: string; port: number };
  source: {
    ip: string;
    /** The peer's SPIFFE ID (`spiffe://td/ns/x/sa/y`); undefined for plaintext. */
    principal?: string;
    /** Used only when `principal` has no `/ns/<ns>/sa/<sa>` form: as in ztunnel, the namespace comes from the identity, so plaintext peers have none. */
    namespace?: string;
  };
}
export interface DryRunResult { policy: string; action: AuthzAction; matched: boolean }
export interface Decision {
  allowed: boolean;
  reason: string;
  /** `ns/name` of the DENY or ALLOW policy that decided; absent for the defaults. */
  policy?: string;
  /** Every applicable dry-run policy, and whether it matched. */
  dryRun: DryRunResult[];
  /** The decision if the dry-run policies were enforced too (present when any applies). */
  dryRunAllowed?: boolean;
}

interface Peer { ip: ReturnType<typeof parseIp>; principal?: string; namespace?: string; sa?: string; dstIp: ReturnType<typeof parseIp>; dstPort: number }

const SPIFFE = /^(?:spiffe:\/\/)?[^/]+\/ns\/([^/]+)\/sa\/([^/]+)$/;
const anyOf = <T>(xs: readonly T[], f: (x: T) => boolean): boolean => xs.some(f);
/** Populated positive field: some entry matches. Populated negative field: no entry matches. Unset: true. */
const pos = <T>(xs: readonly T[], f: (x: T) => boolean): boolean => xs.length === 0 || anyOf(xs, f);
const neg = <T>(xs: readonly T[], f: (x: T) => boolean): boolean => !anyOf(xs, f);

function sourceMatches(s: SourceMatch, c: Peer): boolean {
  const sa = c.namespace !== undefined && c.sa !== undefined ? `${c.namespace}/${c.sa}` : undefined;
  return pos(s.principals, (m) => stringMatches(m, c.principal)) && neg(s.notPrincipals, (m) => stringMatches(m, c.principal))
    && pos(s.namespaces, (m) => stringMatches(m, c.namespace)) && neg(s.notNamespaces, (m) => stringMatches(m, c.namespace))
    && pos(s.serviceAccounts, (x) => x === sa) && neg(s.notServiceAccounts, (x) => x === sa)
    && pos(s.ipBlocks, (b) => cidrContains(b, c.ip)) && neg(s.notIpBlocks, (b) => cidrContains(b, c.ip));
}

function conditionMatches(w: Condition, c: Peer): boolean {
  switch (w.key) {
    case 'destination.port': return pos(w.values, (p) => p === c.dstPort) && neg(w.notValues, (p) => p === c.dstPort);
    case 'source.ip': case 'destination.ip': {
      const ip = w.key === 'source.ip' ? c.ip : c.dstIp;
      return pos(w.values, (b) => cidrContains(b, ip)) && neg(w.notValues, (b) => cidrContains(b, ip));
    }
    default: {
      const v = w.key === 'source.principal' ? c.principal : c.namespace;
      return pos(w.values, (m) => stringMatches(m, v)) && neg(w.notValues, (m) => stringMatches(m, v));
    }
  }
}

/** Any rule; within a rule from AND to AND when; within from/to any entry; within an entry every set field. */
function policyMatches(p: AuthorizationPolicy, c: Peer): boolean {
  return p.rules.some((r) => !r.neverMatches
    && (r.from.length === 0 || r.from.some((s) => sourceMatches(s, c)))
    && (r.to.length === 0 || r.to.some((o) => pos(o.ports, (x) => x === c.dstPort) && neg(o.notPorts, (x) => x === c.dstPort)))
    && r.when.every((w) => conditionMatches(w, c)));
}

/** Whether a policy applies to the destination workload (root-namespace policies apply in every namespace). */
export function appliesTo(p: AuthorizationPolicy, dst: { namespace: string; labels: Record<string, string> }, rootNamespace = DEFAULT_ROOT_NAMESPACE): boolean {
  if (p.waypointOnly || (p.namespace !== dst.namespace && p.namespace !== rootNamespace)) return false;
  return p.matchLabels === undefined || Object.entries(p.matchLabels).every(([k, v]) => dst.labels[k] === v);
}

const ref = (p: AuthorizationPolicy): string => `${p.namespace}/${p.name}`;

function decide(ps: readonly AuthorizationPolicy[], c: Peer): Omit<Decision, 'dryRun' | 'dryRunAllowed'> {
  const bad = ps.find((p) => p.malformed !== undefined);
  if (bad) return { allowed: false, reason: `denied: policy ${ref(bad)} is malformed (${bad.malformed}); fix it`, policy: ref(bad) };
  const deny = ps.find((p) => p.action === 'DENY' && policyMatches(p, c));
  if (deny) return { allowed: false, reason: `denied by DENY policy ${ref(deny)}`, policy: ref(deny) };
  const allows = ps.filter((p) => p.action === 'ALLOW');
  if (allows.length === 0) return { allowed: true, reason: 'allowed: no ALLOW policy applies' };
  const allow = allows.find((p) => policyMatches(p, c));
  if (allow) return { allowed: true, reason: `allowed by ALLOW policy ${ref(allow)}`, policy: ref(allow) };
  return { allowed: false, reason: `denied: no rule of the applicable ALLOW policies matched (${allows.map(ref).join(', ')})` };
}

/** ztunnel's decision for an inbound connection. Pure; dry-run policies are reported, never enforced. */
export function authorize(policies: readonly AuthorizationPolicy[], conn: Connection, rootNamespace = DEFAULT_ROOT_NAMESPACE): Decision {
  const m = conn.source.principal === undefined ? undefined : SPIFFE.exec(conn.source.principal);
  const peer: Peer = {
    ip: parseIp(conn.source.ip),
    principal: conn.source.principal?.replace(/^spiffe:\/\//, ''),
    namespace: conn.source.principal === undefined ? undefined : m?.[1] ?? conn.source.namespace,
    sa: m?.[2],
    dstIp: parseIp(conn.destination.ip),
    dstPort: conn.destination.port,
  };
  const applicable = policies.filter((p) => appliesTo(p, conn.destination, rootNamespace))
    .sort((a, b) => ref(a).localeCompare(ref(b)));
  const enforced = applicable.filter((p) => !p.dryRun);
  const shadow = applicable.filter((p) => p.dryRun);
  const d: Decision = { ...decide(enforced, peer), dryRun: shadow.map((p) => ({ policy: ref(p), action: p.action, matched: policyMatches(p, peer) })) };
  if (shadow.length > 0) d.dryRunAllowed = decide(applicable, peer).allowed;
  return d;
}
