// The agent's configuration: defaults, an optional YAML/JSON config file, and command-line flags (flags win).
// parseAgentConfig is pure and validates everything once; the rest of the agent only sees AgentConfig.
import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { DEFAULT_AGENT_SOCKET } from './protocol/cni-event.js';
import { isLogLevel } from './log-levels.js';
import { parseServiceCidrs } from './workload/service-cidrs.js';
import type { LevelWithSilent } from 'pino';
import { AmbientError } from './errors.js';

export type RedirectMode = 'iptables' | 'nftables' | 'ebpf';
export const REDIRECT_MODES: readonly RedirectMode[] = ['iptables', 'nftables', 'ebpf'];

export type WorkloadSourceKind = 'files' | 'kubernetes';
export const WORKLOAD_SOURCES: readonly WorkloadSourceKind[] = ['files', 'kubernetes'];

export interface AgentConfig {
  nodeName: string;
  stateDir: string;
  socketPath: string;
  workloadSource: WorkloadSourceKind;
  workloadsDir: string;
  /** kubernetes source: kubeconfig file; '' = in-cluster (service-account token and CA, $KUBERNETES_SERVICE_HOST/PORT). */
  kubeconfig: string;
  /** Where the host's /proc is visible (a DaemonSet mounts it at /host/proc): scanned to find running pods' netns. */
  procRoot: string;
  redirectMode: RedirectMode;
  logLevel: LevelWithSilent;
  /** Log a line for every connection that ends well (failed and refused ones are always logged). */
  accessLog: boolean;
  /** Inbound source preservation: the app sees the client's address as the peer (IP_TRANSPARENT + in-pod reply routing). */
  preserveSource: boolean;
  /**
   * IPv6 capture (every backend: ip6tables, the inet table, or the eBPF programs): an enrolled pod's IPv6 TCP is carried
   * by the agent (its IPv6 listeners, HBONE over IPv6) instead of refused in the pod, and IPv6 pod addresses are mesh
   * addresses. Off: IPv6 TCP is refused.
   */
  captureIpv6: boolean;
  /** How long ADD waits for a pod to appear in the workload source before failing (try again later). */
  podLookupTimeoutMs: number;
  /** How often in-pod and node rules and listeners are verified and repaired; 0 disables. */
  repairIntervalMs: number;
  /**
   * After handing over to a successor: how long established connections are served before the rest are cut. Up to
   * 3600; in a DaemonSet keep it under the pod's terminationGracePeriodSeconds (45 in deploy/), or a SIGTERM'd old
   * agent is killed mid-drain (see drainWarning).
   */
  drainSeconds: number;
  /**
   * After a take-over's drain: exit 0 (true: the CLI, the testbed), or stop serving and stay up idle (not ready, no
   * locks, no listeners) until SIGTERM, then exit 0 (false: a DaemonSet, whose kubelet restarts a container that exits
   * and whose restarted agent would take the node back from the new one).
   */
  exitAfterHandover: boolean;
  /** SPIFFE trust domain of every identity (spiffe://<trustDomain>/ns/<ns>/sa/<sa>). */
  trustDomain: string;
  /** DNS suffix of the cluster's Service names (kubelet's --cluster-domain): `<svc>.<ns>.svc.<clusterDomain>`. */
  clusterDomain: string;
  /** The cluster's Service CIDRs: an unknown address inside them is refused, not passed through in clear. [] = off. */
  serviceCidrs: string[];
  /** Limit the kubelet-probe SNAT to this cgroup v2 path (the kubelet's); '' = any local process (Istio's default). */
  probeSnatCgroup: string;
  /** Where workload certificates come from. */
  ca: 'builtin' | 'istio';
  /** builtin CA: folder of the root key and certificate (several nodes may share one). */
  caDir: string;
  /** Lifetime of workload certificates. */
  certTtlSeconds: number;
  /** istio CA: address host:port of istiod's CA (e.g. istiod.istio-system.svc:15012). */
  istioCaAddress: string;
  /** istio CA: PEM file of the roots that sign istiod's serving certificate. */
  istioCaRootCert: string;
  /** istio CA: file holding the bearer JWT (re-read on every request). */
  istioCaTokenFile: string;
  /** istio CA: name to verify on the CA's serving certificate when it is not the address's host ('' = the host). */
  istioCaTlsServerName: string;
  /** Loopback port of the admin API (/config_dump, /logging). */
  adminPort: number;
  /** Loopback port of the Prometheus endpoint (/metrics, /stats/prometheus). */
  metricsPort: number;
  /** Loopback port of the readiness probe (/healthz/ready). */
  readinessPort: number;
}

export const CONFIG_DEFAULTS: Omit<AgentConfig, 'nodeName'> = {
  stateDir: '/var/lib/ambient-node',
  socketPath: DEFAULT_AGENT_SOCKET,
  workloadSource: 'files',
  workloadsDir: '/etc/ambient-node/workloads',
  kubeconfig: '',
  procRoot: '/proc',
  redirectMode: 'iptables',
  logLevel: 'info',
  accessLog: true,
  preserveSource: true,
  captureIpv6: true,
  podLookupTimeoutMs: 3000,
  repairIntervalMs: 5000,
  drainSeconds: 30,
  exitAfterHandover: true,
  trustDomain: 'cluster.local',
  clusterDomain: 'cluster.local',
  serviceCidrs: [],
  probeSnatCgroup: '',
  ca: 'builtin',
  caDir: '',
  certTtlSeconds: 24 * 3600,
  istioCaAddress: '',
  istioCaRootCert: '',
  istioCaTokenFile: '/var/run/secrets/tokens/istio-token',
  istioCaTlsServerName: '',
  adminPort: 15000,
  metricsPort: 15020,
  readinessPort: 15021,
};

export class ConfigError extends AmbientError<'AMB_ERR_CONFIG'> {
  constructor(msg: string) {
    super('AMB_ERR_CONFIG', msg);
  }
}

/** Raw values as they come from a file or flags, keyed by the file's names (camelCase or kebab-case). */
export type RawConfig = Record<string, unknown>;

const kebab = (camel: string): string => camel.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

/** Every accepted spelling of a setting: its camelCase name, its kebab-case flag name, and `socket` for socketPath. */
const KEYS: Record<string, keyof AgentConfig> = Object.fromEntries([
  ...(['nodeName', ...Object.keys(CONFIG_DEFAULTS)] as (keyof AgentConfig)[]).flatMap((k) => [[k, k], [kebab(k), k]]),
  ['socket', 'socketPath'],
]);

/** Settings that existed once, every spelling, with why they are gone: named in the error instead of "unknown setting". */
const REMOVED: Record<string, string> = Object.fromEntries(['dataPath', 'data-path'].map((k) => [
  k,
  'dataPath (--data-path) was removed: the native HBONE data path (dist/native/libambient-hbone.so) is the only one; drop the setting',
]));

function normalise(raw: RawConfig, origin: string): Partial<Record<keyof AgentConfig, unknown>> {
  const out: Partial<Record<keyof AgentConfig, unknown>> = {};
  for (const [k, v] of Object.entries(raw)) {
    if (v === undefined) continue;
    const removed = REMOVED[k];
    if (removed) throw new ConfigError(`${origin}: ${removed}`);
    const key = KEYS[k];
    if (!key) throw new ConfigError(`${origin}: unknown setting "${k}" (known: ${[...new Set(Object.values(KEYS))].join(', ')})`);
    out[key] = v;
  }
  return out;
}

function asString(v: unknown, key: string): string {
  if (typeof v !== 'string' || v === '') throw new ConfigError(`${key} must be a non-empty string`);
  return v;
}

/** A true/false setting: a boolean (config file) or its text (flags); anything else is a ConfigError naming it. */
function booleanSetting(name: string, v: unknown): boolean {
  if (v === true || v === 'true') return true;
  if (v === false || v === 'false') return false;
  throw new ConfigError(`${name} must be true or false, got ${JSON.stringify(v)}`);
}

/** Merges defaults < file < flags and validates the result. */
export function parseAgentConfig(file: RawConfig, flags: RawConfig, env: { NODE_NAME?: string } = {}): AgentConfig {
  const merged = { ...normalise(file, 'config file'), ...normalise(flags, 'flags') };
  const nodeName = merged.nodeName ?? env.NODE_NAME ?? hostname();
  const redirectMode = merged.redirectMode ?? CONFIG_DEFAULTS.redirectMode;
  if (!REDIRECT_MODES.includes(redirectMode as RedirectMode)) {
    throw new ConfigError(`redirectMode must be one of ${REDIRECT_MODES.join(', ')}, got ${JSON.stringify(redirectMode)}`);
  }
  const logLevel = merged.logLevel ?? CONFIG_DEFAULTS.logLevel;
  if (typeof logLevel !== 'string' || !isLogLevel(logLevel)) throw new ConfigError(`logLevel must be a pino level, got ${JSON.stringify(logLevel)}`);
  const accessLog = booleanSetting('accessLog', merged.accessLog ?? CONFIG_DEFAULTS.accessLog);
  const exitAfterHandover = booleanSetting('exitAfterHandover', merged.exitAfterHandover ?? CONFIG_DEFAULTS.exitAfterHandover);
  const preserveSource = booleanSetting('preserveSource', merged.preserveSource ?? CONFIG_DEFAULTS.preserveSource);
  const captureIpv6 = booleanSetting('captureIpv6', merged.captureIpv6 ?? CONFIG_DEFAULTS.captureIpv6);
  const workloadSource = merged.workloadSource ?? 'files';
  if (!WORKLOAD_SOURCES.includes(workloadSource as WorkloadSourceKind)) throw new ConfigError(`workloadSource must be one of ${WORKLOAD_SOURCES.join(', ')}, got ${JSON.stringify(workloadSource)}`);
  const timeout = Number(merged.podLookupTimeoutMs ?? CONFIG_DEFAULTS.podLookupTimeoutMs);
  if (!Number.isInteger(timeout) || timeout < 0 || timeout > 60_000) throw new ConfigError('podLookupTimeoutMs must be an integer from 0 to 60000');
  const repair = Number(merged.repairIntervalMs ?? CONFIG_DEFAULTS.repairIntervalMs);
  if (!Number.isInteger(repair) || repair < 0) throw new ConfigError('repairIntervalMs must be a non-negative integer (0 disables repair)');
  const drainSeconds = Number(merged.drainSeconds ?? CONFIG_DEFAULTS.drainSeconds);
  if (!Number.isInteger(drainSeconds) || drainSeconds < 0 || drainSeconds > 3600) {
    throw new ConfigError('drainSeconds must be an integer from 0 to 3600 (in a DaemonSet, below its terminationGracePeriodSeconds)');
  }
  const stateDir = asString(merged.stateDir ?? CONFIG_DEFAULTS.stateDir, 'stateDir');
  const trustDomain = asString(merged.trustDomain ?? CONFIG_DEFAULTS.trustDomain, 'trustDomain');
  if (!/^[a-z0-9._-]+$/.test(trustDomain)) throw new ConfigError(`trustDomain must be lower-case letters, digits, ".", "_" or "-", got ${JSON.stringify(trustDomain)}`);
  const clusterDomain = asString(merged.clusterDomain ?? CONFIG_DEFAULTS.clusterDomain, 'clusterDomain');
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/.test(clusterDomain)) {
    throw new ConfigError(`clusterDomain must be a DNS name (lower-case labels joined by "."), got ${JSON.stringify(clusterDomain)}`);
  }
  const serviceCidrs = parseCidrList(merged.serviceCidrs ?? CONFIG_DEFAULTS.serviceCidrs);
  const probeSnatCgroup = String(merged.probeSnatCgroup ?? CONFIG_DEFAULTS.probeSnatCgroup);
  if (probeSnatCgroup && (!/^\/[A-Za-z0-9._@:\/-]*$/.test(probeSnatCgroup) || probeSnatCgroup.split('/').includes('..'))) {
    throw new ConfigError(`probeSnatCgroup must be an absolute cgroup v2 path (e.g. /system.slice/kubelet.service), got ${JSON.stringify(probeSnatCgroup)}`);
  }
  if (probeSnatCgroup && redirectMode === 'nftables') throw new ConfigError('probeSnatCgroup needs redirectMode iptables or ebpf (the probe SNAT is an iptables rule there)');
  const ca = merged.ca ?? CONFIG_DEFAULTS.ca;
  if (ca !== 'builtin' && ca !== 'istio') throw new ConfigError(`ca must be builtin or istio, got ${JSON.stringify(ca)}`);
  const ttl = Number(merged.certTtlSeconds ?? CONFIG_DEFAULTS.certTtlSeconds);
  if (!Number.isInteger(ttl) || ttl < 10 || ttl > 365 * 24 * 3600) throw new ConfigError('certTtlSeconds must be an integer from 10 to 31536000');
  const istio = {
    istioCaAddress: String(merged.istioCaAddress ?? CONFIG_DEFAULTS.istioCaAddress),
    istioCaRootCert: String(merged.istioCaRootCert ?? CONFIG_DEFAULTS.istioCaRootCert),
    istioCaTokenFile: String(merged.istioCaTokenFile ?? CONFIG_DEFAULTS.istioCaTokenFile),
    istioCaTlsServerName: String(merged.istioCaTlsServerName ?? CONFIG_DEFAULTS.istioCaTlsServerName),
  };
  const port = (key: 'adminPort' | 'metricsPort' | 'readinessPort'): number => {
    const n = Number(merged[key] ?? CONFIG_DEFAULTS[key]);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new ConfigError(`${key} must be an integer port from 1 to 65535, got ${JSON.stringify(merged[key])}`);
    return n;
  };
  const ports = { adminPort: port('adminPort'), metricsPort: port('metricsPort'), readinessPort: port('readinessPort') };
  if (new Set(Object.values(ports)).size !== 3) throw new ConfigError(`adminPort, metricsPort and readinessPort must differ, got ${Object.values(ports).join(', ')}`);
  if (ca === 'istio' && (!istio.istioCaAddress || !istio.istioCaRootCert)) {
    throw new ConfigError('ca istio needs istioCaAddress and istioCaRootCert (and istioCaTokenFile)');
  }
  return {
    nodeName: asString(nodeName, 'nodeName'),
    stateDir,
    socketPath: asString(merged.socketPath ?? CONFIG_DEFAULTS.socketPath, 'socketPath'),
    workloadSource: workloadSource as WorkloadSourceKind,
    workloadsDir: asString(merged.workloadsDir ?? CONFIG_DEFAULTS.workloadsDir, 'workloadsDir'),
    kubeconfig: String(merged.kubeconfig ?? CONFIG_DEFAULTS.kubeconfig),
    procRoot: asString(merged.procRoot ?? CONFIG_DEFAULTS.procRoot, 'procRoot'),
    redirectMode: redirectMode as RedirectMode,
    logLevel,
    accessLog,
    preserveSource,
    captureIpv6,
    podLookupTimeoutMs: timeout,
    repairIntervalMs: repair,
    drainSeconds,
    exitAfterHandover,
    trustDomain,
    clusterDomain,
    serviceCidrs,
    probeSnatCgroup,
    ca,
    caDir: typeof merged.caDir === 'string' && merged.caDir ? merged.caDir : `${stateDir}/ca`,
    certTtlSeconds: ttl,
    ...istio,
    ...ports,
  };
}

/** The longest drain that fits the shipped DaemonSet's terminationGracePeriodSeconds (45) with room to stop. */
export const DAEMONSET_DRAIN_SECONDS_MAX = 40;

/**
 * A warning for the log at start, or undefined: an agent that stays up after a hand-over (exitAfterHandover false, as in
 * a DaemonSet) with a drain longer than the shipped pod's grace period allows is killed mid-drain when its pod is deleted
 * (the kubelet's SIGKILL cuts what is left). Allowed (a DaemonSet may raise its grace period); said once. Pure.
 */
export function drainWarning(cfg: Pick<AgentConfig, 'drainSeconds' | 'exitAfterHandover'>): string | undefined {
  if (cfg.exitAfterHandover || cfg.drainSeconds <= DAEMONSET_DRAIN_SECONDS_MAX) return undefined;
  return `drainSeconds ${cfg.drainSeconds} is above ${DAEMONSET_DRAIN_SECONDS_MAX}: raise the pod's terminationGracePeriodSeconds (45 in deploy/) ` +
    'above it, or a draining agent is killed when its pod is deleted and what is left is cut then';
}

/** `serviceCidrs` from a file (a list or a comma-separated string) or a flag (comma-separated); each one checked. */
function parseCidrList(v: unknown): string[] {
  const list = typeof v === 'string' ? v.split(',').map((c) => c.trim()).filter((c) => c !== '') : v;
  if (!Array.isArray(list) || !list.every((c): c is string => typeof c === 'string')) throw new ConfigError(`serviceCidrs must be a list of CIDRs, got ${JSON.stringify(v)}`);
  try {
    parseServiceCidrs(list);
  } catch (err) {
    throw new ConfigError(`serviceCidrs: ${(err as Error).message}`);
  }
  return list;
}

/** Reads a YAML or JSON config file (JSON is YAML). The YAML parser is loaded here, not by every CLI command. */
export async function readConfigFile(path: string): Promise<RawConfig> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${path}: ${(err as Error).message}`);
  }
  const { parse: parseYaml } = await import('yaml');
  const doc: unknown = parseYaml(text);
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`config file ${path} must hold a mapping`);
  return doc as RawConfig;
}
