// The wire contract between the ambient-cni plugin and the agent's event server (HTTP/1.1 + JSON on a Unix socket).
// Declared once here and imported by both sides; the agent validates every body with parseCniEvent before use.
import { isIP } from 'node:net';
import { AmbientError } from '../errors.js';

/** Default path of the agent's event socket (plugin config key `agent_socket`). */
export const DEFAULT_AGENT_SOCKET = '/var/run/ambient-node/cni.sock';

/** Largest request body the event server accepts. */
export const MAX_EVENT_BYTES = 1 << 20;

export const EVENT_PATHS = {
  add: '/v1/cni/add',
  del: '/v1/cni/del',
  check: '/v1/cni/check',
  gc: '/v1/cni/gc',
  status: '/v1/status',
} as const;

/** One IP the previous plugins assigned to the pod (from prevResult.ips). */
export interface PodIp {
  address: string; // CIDR form, e.g. "10.244.1.5/24"
  gateway?: string;
  interface?: number;
}

/** Kubernetes facts from CNI_ARGS. */
export interface K8sArgs {
  podName?: string;
  podNamespace?: string;
  podUid?: string;
  podInfraContainerId?: string;
}

/** A log record the plugin emitted while handling this invocation, re-logged by the agent. */
export interface PluginLogRecord {
  level: number;
  time: number;
  msg: string;
  [key: string]: unknown;
}

/** ADD, DEL or CHECK of one attachment, as the runtime gave it to the plugin. */
export interface CniEvent {
  command: 'ADD' | 'DEL' | 'CHECK';
  cniVersion: string;
  containerId: string;
  netns: string; // may be "" on DEL
  ifname: string;
  /** CNI_ARGS verbatim ("K=V;K=V") and the parsed Kubernetes keys. */
  args: string;
  k8s: K8sArgs;
  /** IPs from prevResult; empty when the plugin was invoked without one. */
  ips: PodIp[];
  /** The network name from the config (`name`). */
  network: string;
  pluginLog?: PluginLogRecord[];
}

/** GC: every attachment the runtime still has; the agent drops the rest. */
export interface GcEvent {
  cniVersion: string;
  network: string;
  validAttachments: { containerId: string; ifname: string }[];
  pluginLog?: PluginLogRecord[];
}

/** The agent's verdict on ADD/CHECK/DEL/GC. */
export interface EventVerdict {
  /** enrolled: rules and listeners are in place; skipped: pod is not selected for the mesh. */
  result: 'enrolled' | 'skipped' | 'removed' | 'ok';
  reason?: string;
  removed?: number;
}

/** The body of any non-2xx reply. `code` is the CNI error code the plugin should report. */
export interface EventError {
  code: number;
  msg: string;
  details?: string;
}

export interface AgentStatus {
  ready: boolean;
  reason?: string;
  node: string;
  backend: string;
  enrolled: number;
  /**
   * AuthorizationPolicies and PeerAuthentications that failed to parse and, with no previous good version, stand as
   * fail-closed placeholders (denying everything, or refusing plaintext, in their scope). Absent from older agents.
   */
  malformedPolicies?: number;
  /** Each of them: kind, `ns/name` and the parse error (naming the field). */
  malformed?: { kind: string; policy: string; error: string }[];
}

export class EventParseError extends AmbientError<'AMB_ERR_BAD_EVENT'> {
  constructor(msg: string) {
    super('AMB_ERR_BAD_EVENT', msg);
  }
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new EventParseError(`${what} must be an object`);
  return v as Record<string, unknown>;
}

function str(o: Record<string, unknown>, key: string, opts: { optional?: boolean; nonEmpty?: boolean } = {}): string {
  const v = o[key];
  if (v === undefined && opts.optional) return '';
  if (typeof v !== 'string') throw new EventParseError(`field "${key}" must be a string`);
  if (opts.nonEmpty && v === '') throw new EventParseError(`field "${key}" must not be empty`);
  return v;
}

function optStr(o: Record<string, unknown>, key: string): string | undefined {
  const v = o[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'string') throw new EventParseError(`field "${key}" must be a string`);
  return v;
}

function logRecords(v: unknown): PluginLogRecord[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v)) throw new EventParseError('field "pluginLog" must be an array');
  return v.slice(0, 100).map((r, i) => {
    const o = obj(r, `pluginLog[${i}]`);
    return { ...o, level: Number(o.level) || 30, time: Number(o.time) || Date.now(), msg: String(o.msg ?? '') };
  });
}

/** Validates an ADD/DEL/CHECK body. */
export function parseCniEvent(body: unknown): CniEvent {
  const o = obj(body, 'event');
  const command = o.command;
  if (command !== 'ADD' && command !== 'DEL' && command !== 'CHECK') {
    throw new EventParseError(`field "command" must be ADD, DEL or CHECK, got ${JSON.stringify(command)}`);
  }
  const k = obj(o.k8s ?? {}, 'k8s');
  const ipsRaw = o.ips ?? [];
  if (!Array.isArray(ipsRaw)) throw new EventParseError('field "ips" must be an array');
  const ips = ipsRaw.map((ip, i) => {
    const io = obj(ip, `ips[${i}]`);
    const address = str(io, 'address', { nonEmpty: true });
    // CIDR notation as the CNI result has it: an IP and a prefix length, nothing else (it reaches rule commands).
    const cidr = /^([^/]+)\/(\d{1,3})$/.exec(address);
    const family = isIP(cidr?.[1] ?? address);
    if (family === 0 || (cidr && Number(cidr[2]) > (family === 4 ? 32 : 128))) {
      throw new EventParseError(`field "ips[${i}].address" must be an IP address with an optional prefix length, got ${JSON.stringify(address)}`);
    }
    const gateway = optStr(io, 'gateway');
    const iface = io.interface;
    return {
      address,
      ...(gateway ? { gateway } : {}),
      ...(typeof iface === 'number' ? { interface: iface } : {}),
    };
  });
  const k8s: K8sArgs = {};
  const podName = optStr(k, 'podName');
  const podNamespace = optStr(k, 'podNamespace');
  const podUid = optStr(k, 'podUid');
  const infra = optStr(k, 'podInfraContainerId');
  if (podName) k8s.podName = podName;
  if (podNamespace) k8s.podNamespace = podNamespace;
  if (podUid) k8s.podUid = podUid;
  if (infra) k8s.podInfraContainerId = infra;
  const ev: CniEvent = {
    command,
    cniVersion: str(o, 'cniVersion', { nonEmpty: true }),
    containerId: str(o, 'containerId', { nonEmpty: true }),
    netns: str(o, 'netns', { optional: true }),
    ifname: str(o, 'ifname', { nonEmpty: true }),
    args: str(o, 'args', { optional: true }),
    k8s,
    ips,
    network: str(o, 'network', { optional: true }),
  };
  const pluginLog = logRecords(o.pluginLog);
  if (pluginLog) ev.pluginLog = pluginLog;
  if (command !== 'DEL' && ev.netns === '') throw new EventParseError(`field "netns" is required for ${command}`);
  return ev;
}

/** Validates a GC body. */
export function parseGcEvent(body: unknown): GcEvent {
  const o = obj(body, 'event');
  const raw = o.validAttachments ?? [];
  if (!Array.isArray(raw)) throw new EventParseError('field "validAttachments" must be an array');
  const ev: GcEvent = {
    cniVersion: str(o, 'cniVersion', { nonEmpty: true }),
    network: str(o, 'network', { optional: true }),
    validAttachments: raw.map((a, i) => {
      const ao = obj(a, `validAttachments[${i}]`);
      return { containerId: str(ao, 'containerId', { nonEmpty: true }), ifname: str(ao, 'ifname', { nonEmpty: true }) };
    }),
  };
  const pluginLog = logRecords(o.pluginLog);
  if (pluginLog) ev.pluginLog = pluginLog;
  return ev;
}
