// Parses the network configuration on stdin and CNI_ARGS, once, into typed objects; nothing past here sees raw JSON
// except prevResult, which is kept verbatim because a chained plugin must hand it back unchanged.
import type { PodIp } from '../../agent/src/protocol/cni-event.js';
import { CniCode, CniError } from './errors.js';
import { DEFAULT_AGENT_SOCKET, DEFAULT_AGENT_TIMEOUT_MS, MAX_AGENT_TIMEOUT_MS } from './shim-constants.js';
import { assertSupportedVersion, type CniVersion } from './version.js';

export type JsonValue = string | number | boolean | null | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/** Defaults of the plugin's own config keys (documented in the README). */
export const CONFIG_DEFAULTS = {
  agent_socket: DEFAULT_AGENT_SOCKET,
  agent_timeout_ms: DEFAULT_AGENT_TIMEOUT_MS,
  exclude_namespaces: ['kube-system'],
  agent_namespace: 'ambient-system',
  log_level: 'info' as LogLevel,
} as const;

/** Pods named `<AGENT_POD_PREFIX>*` in agent_namespace are the agent's own and never wait for the agent. */
export const AGENT_POD_PREFIX = 'ambient-node-';

export interface PrevResult {
  /** Exactly what the runtime sent, to be printed back on ADD. */
  raw: JsonObject;
  ips: PodIp[];
}

export interface Attachment {
  containerId: string;
  ifname: string;
}

export interface NetConf {
  cniVersion: CniVersion;
  name: string;
  type: string;
  prevResult?: PrevResult;
  agentSocket: string;
  agentTimeoutMs: number;
  excludeNamespaces: string[];
  agentNamespace: string;
  logLevel: LogLevel;
  /** GC only: `cni.dev/valid-attachments`; undefined when the key is absent. */
  validAttachments?: Attachment[];
  /** Lenient parse only: invalid plugin keys that were replaced by their defaults, one message each. */
  warnings: string[];
}

export interface CniArgs {
  /** CNI_ARGS verbatim. */
  raw: string;
  podName?: string;
  podNamespace?: string;
  podUid?: string;
  podInfraContainerId?: string;
  /** IgnoreUnknown=1|true. Recorded only: this plugin tolerates unknown keys either way. */
  ignoreUnknown: boolean;
  /** Lenient parse only: pairs that were skipped. */
  warnings: string[];
}

export interface ParseOptions {
  /**
   * DEL must not fail because of this plugin's own keys (a typo would block every pod deletion on the node):
   * when set, invalid plugin keys and prevResult fall back to defaults and are reported in `warnings`.
   * Spec-level fields (cniVersion, name, type) stay strict.
   */
  lenient?: boolean;
}

/** Step 1: bytes to a JSON object. Anything else is DecodingFailure. */
export function decodeNetConf(stdin: string): JsonObject {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CniCode.DecodingFailure, 'network configuration on stdin is not valid JSON', {
      details: err instanceof Error ? err.message : String(err),
      cause: err,
    });
  }
  if (!isObject(parsed)) {
    throw new CniError(CniCode.DecodingFailure, 'network configuration on stdin must be a JSON object');
  }
  return parsed;
}

/** The cniVersion the config declares, if it is a string (for error output before full validation). */
export function declaredVersion(raw: JsonObject): string | undefined {
  return typeof raw.cniVersion === 'string' ? raw.cniVersion : undefined;
}

/** Step 2: the decoded object to a NetConf. IncompatibleVersion, or InvalidNetworkConfig naming the field. */
export function parseNetConf(raw: JsonObject, opts: ParseOptions = {}): NetConf {
  const version = raw.cniVersion;
  if (version === undefined) {
    // libcni reads a missing cniVersion as 0.1.0, which predates chaining.
    assertSupportedVersion('0.1.0', ' (the config has no cniVersion)');
  }
  if (typeof version !== 'string') throw invalid('cniVersion', 'must be a string');
  assertSupportedVersion(version);

  const name = raw.name;
  if (typeof name !== 'string' || name === '') throw invalid('name', 'must be a non-empty string');
  if (!/^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/.test(name)) {
    throw invalid('name', 'must start with a letter or digit and contain only letters, digits, "_", "." and "-"');
  }
  const type = raw.type;
  if (typeof type !== 'string' || type === '') throw invalid('type', 'must be a non-empty string');

  const warnings: string[] = [];
  const key = <T>(k: string, fallback: T, parse: (v: JsonValue) => T): T => {
    const v = raw[k];
    if (v === undefined) return fallback;
    try {
      return parse(v);
    } catch (err) {
      if (!opts.lenient || !(err instanceof CniError)) throw err;
      warnings.push(err.message);
      return fallback;
    }
  };

  const conf: NetConf = {
    cniVersion: version,
    name,
    type,
    agentSocket: key('agent_socket', CONFIG_DEFAULTS.agent_socket, parseSocketPath),
    agentTimeoutMs: key('agent_timeout_ms', CONFIG_DEFAULTS.agent_timeout_ms, parseTimeout),
    excludeNamespaces: key('exclude_namespaces', [...CONFIG_DEFAULTS.exclude_namespaces], (v) =>
      stringArray('exclude_namespaces', v),
    ),
    agentNamespace: key('agent_namespace', CONFIG_DEFAULTS.agent_namespace, (v) => nonEmpty('agent_namespace', v)),
    logLevel: key('log_level', CONFIG_DEFAULTS.log_level, parseLogLevel),
    warnings,
  };
  const prev = key('prevResult', undefined, parsePrevResult);
  if (prev) conf.prevResult = prev;
  // libcni sends both names: the spec text once said `cni.dev/attachments` (containernetworking/cni#1101).
  const attachKey = raw['cni.dev/valid-attachments'] !== undefined ? 'cni.dev/valid-attachments' : 'cni.dev/attachments';
  const attachments = key(attachKey, undefined, (v) => parseAttachments(attachKey, v));
  if (attachments) conf.validAttachments = attachments;
  return conf;
}

/** Parses CNI_ARGS ("K=V;K=V"). A pair without "=" is InvalidEnv, unless lenient (then skipped with a warning). */
export function parseCniArgs(raw: string, opts: ParseOptions = {}): CniArgs {
  const args: CniArgs = { raw, ignoreUnknown: false, warnings: [] };
  for (const pair of raw.split(';')) {
    if (pair.trim() === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) {
      const msg = `CNI_ARGS: invalid pair ${JSON.stringify(pair)} (want KEY=VALUE)`;
      if (!opts.lenient) throw new CniError(CniCode.InvalidEnv, msg, { details: raw });
      args.warnings.push(msg);
      continue;
    }
    const k = pair.slice(0, eq).trim();
    const v = pair.slice(eq + 1).trim();
    if (k === 'K8S_POD_NAME' && v) args.podName = v;
    else if (k === 'K8S_POD_NAMESPACE' && v) args.podNamespace = v;
    else if (k === 'K8S_POD_UID' && v) args.podUid = v;
    else if (k === 'K8S_POD_INFRA_CONTAINER_ID' && v) args.podInfraContainerId = v;
    else if (k === 'IgnoreUnknown') args.ignoreUnknown = v === '1' || v.toLowerCase() === 'true';
  }
  return args;
}

function parseSocketPath(v: JsonValue): string {
  const path = nonEmpty('agent_socket', v);
  if (!path.startsWith('/')) throw invalid('agent_socket', `must be an absolute path, got ${JSON.stringify(path)}`);
  return path;
}

function parseTimeout(v: JsonValue): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > MAX_AGENT_TIMEOUT_MS) {
    throw invalid('agent_timeout_ms', `must be an integer from 1 to ${MAX_AGENT_TIMEOUT_MS}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function parseLogLevel(v: JsonValue): LogLevel {
  const level = LOG_LEVELS.find((l) => l === v);
  if (!level) throw invalid('log_level', `must be one of ${LOG_LEVELS.join(', ')}, got ${JSON.stringify(v)}`);
  return level;
}

function parsePrevResult(v: JsonValue): PrevResult | undefined {
  if (v === null) return undefined;
  if (!isObject(v)) throw invalid('prevResult', 'must be an object');
  const ipsRaw = v.ips ?? [];
  if (!Array.isArray(ipsRaw)) throw invalid('prevResult.ips', 'must be an array');
  const ips = ipsRaw.map((ip, i): PodIp => {
    const field = `prevResult.ips[${i}]`;
    if (!isObject(ip)) throw invalid(field, 'must be an object');
    if (typeof ip.address !== 'string' || ip.address === '') throw invalid(`${field}.address`, 'must be a non-empty string');
    const out: PodIp = { address: ip.address };
    if (ip.gateway !== undefined) {
      if (typeof ip.gateway !== 'string') throw invalid(`${field}.gateway`, 'must be a string');
      if (ip.gateway) out.gateway = ip.gateway;
    }
    if (ip.interface !== undefined) {
      if (typeof ip.interface !== 'number' || !Number.isInteger(ip.interface) || ip.interface < 0) {
        throw invalid(`${field}.interface`, 'must be a non-negative integer');
      }
      out.interface = ip.interface;
    }
    return out;
  });
  return { raw: v, ips };
}

function parseAttachments(key: string, v: JsonValue): Attachment[] {
  if (!Array.isArray(v)) throw invalid(key, 'must be an array');
  return v.map((a, i) => {
    if (!isObject(a)) throw invalid(`${key}[${i}]`, 'must be an object');
    return {
      containerId: nonEmpty(`${key}[${i}].containerID`, a.containerID),
      ifname: nonEmpty(`${key}[${i}].ifname`, a.ifname),
    };
  });
}

function stringArray(field: string, v: JsonValue): string[] {
  if (!Array.isArray(v) || !v.every((s): s is string => typeof s === 'string')) {
    throw invalid(field, 'must be an array of strings');
  }
  return v;
}

function nonEmpty(field: string, v: JsonValue | undefined): string {
  if (typeof v !== 'string' || v === '') throw invalid(field, 'must be a non-empty string');
  return v;
}

function invalid(field: string, problem: string): CniError {
  return new CniError(CniCode.InvalidNetworkConfig, `invalid network configuration: field "${field}" ${problem}`);
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
