// The CNI data the testbed's runtime handles (conflists, results, runtime config, cache entries) and its
// typed errors. Parsing of plugin output happens here, once; callers never see raw JSON.

export type CniCommand = 'ADD' | 'DEL' | 'CHECK' | 'STATUS' | 'GC' | 'VERSION';

/** One plugin of a conflist: `type` names the executable; everything else is plugin-specific. */
export interface CniPluginConf {
  type: string;
  [key: string]: unknown;
}

export interface CniConfList {
  cniVersion: string;
  name: string;
  plugins: CniPluginConf[];
  disableCheck?: boolean;
  disableGC?: boolean;
}

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
}

export interface CniIpConfig {
  address: string; // CIDR, e.g. "10.244.1.5/24"
  gateway?: string;
  interface?: number;
}

/** A plugin's success result (spec 1.0.0), plus whatever extra keys a plugin adds. */
export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIpConfig[];
  routes?: { dst: string; gw?: string }[];
  dns?: Record<string, unknown>;
  [key: string]: unknown;
}

/** The error object a plugin prints on stdout when it fails. */
export interface CniErrorBody {
  cniVersion?: string;
  code: number;
  msg: string;
  details?: string;
}

/** What identifies one attachment and how the runtime calls the plugins for it. */
export interface RuntimeConf {
  containerId: string;
  /** Path of the pod netns, e.g. /run/netns/<name> (CNI_NETNS). */
  netns: string;
  ifname: string;
  /** CNI_ARGS as key/value pairs, in order. */
  args?: ReadonlyArray<readonly [string, string]>;
  /** Injected as `runtimeConfig` into plugins that declare matching `capabilities`. */
  capabilityArgs?: Record<string, unknown>;
}

/** One attachment as GC sees it (spec key `cni.dev/valid-attachments`). */
export interface GcAttachment {
  containerID: string;
  ifname: string;
}

/** The runtime's cache file `cache/<containerId>-<ifname>.json` (like libcni's cniCacheV1). */
export interface CachedAttachment {
  kind: 'cniCacheV1';
  containerId: string;
  ifName: string;
  networkName: string;
  netns: string;
  cniArgs: [string, string][];
  config: CniConfList;
  result: CniResult;
}

/** One plugin execution: what a benchmark reports as latency. */
export interface PluginInvocation {
  plugin: string;
  command: CniCommand;
  durationMs: number;
  exitCode: number | undefined;
  stderr: string;
}

export type CniPluginFailure =
  /** Exited non-zero and printed a CNI error object: see `cniError`. */
  | 'plugin-error'
  /** No executable named like the plugin `type` in CNI_PATH. */
  | 'not-found'
  /** stdout was not the JSON the command requires. */
  | 'bad-output'
  /** Exited non-zero (or by a signal) without a CNI error object. */
  | 'crashed'
  /** Killed by the runtime after its timeout. */
  | 'timeout';

/** A plugin invocation failed. `cniError` is the plugin's own error JSON when it printed one. */
export class CniPluginError extends Error {
  readonly code = 'TB_ERR_CNI_PLUGIN';
  /** Errors of the DEL the runtime ran to roll back a failed ADD (empty if the rollback succeeded). */
  rollbackErrors: Error[] = [];

  constructor(
    readonly command: CniCommand,
    readonly plugin: string,
    readonly failure: CniPluginFailure,
    readonly detail: {
      cniError?: CniErrorBody;
      stdout: string;
      stderr: string;
      exitCode?: number;
      signal?: string;
      cause?: unknown;
    },
  ) {
    const why =
      detail.cniError !== undefined
        ? `code ${detail.cniError.code}: ${detail.cniError.msg}${detail.cniError.details ? ` (${detail.cniError.details})` : ''}`
        : failure;
    const stderrTail = detail.stderr.trim().split('\n').slice(-5).join('\n');
    super(`CNI ${command} failed in plugin "${plugin}": ${why}${stderrTail ? `\nstderr: ${stderrTail}` : ''}`, {
      cause: detail.cause,
    });
    this.name = 'CniPluginError';
  }

  get cniError(): CniErrorBody | undefined {
    return this.detail.cniError;
  }

  get stderr(): string {
    return this.detail.stderr;
  }

  get stdout(): string {
    return this.detail.stdout;
  }
}

/** The runtime itself refused (no cached result for CHECK, unparsable cache, ...). */
export class CniRuntimeError extends Error {
  readonly code = 'TB_ERR_CNI_RUNTIME';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'CniRuntimeError';
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** The error object in a failed plugin's stdout, or undefined when there is none. */
export function parseCniErrorBody(stdout: string): CniErrorBody | undefined {
  let v: unknown;
  try {
    v = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (!isRecord(v) || typeof v.code !== 'number' || typeof v.msg !== 'string') return undefined;
  const body: CniErrorBody = { code: v.code, msg: v.msg };
  if (typeof v.cniVersion === 'string') body.cniVersion = v.cniVersion;
  if (typeof v.details === 'string') body.details = v.details;
  return body;
}

/** A success result; undefined when `stdout` is not a JSON object with a string cniVersion. */
export function parseCniResult(stdout: string): CniResult | undefined {
  let v: unknown;
  try {
    v = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (!isRecord(v) || typeof v.cniVersion !== 'string') return undefined;
  if (v.ips !== undefined && !Array.isArray(v.ips)) return undefined;
  if (v.interfaces !== undefined && !Array.isArray(v.interfaces)) return undefined;
  return v as CniResult;
}

/** VERSION output: the spec versions a plugin supports; undefined when malformed. */
export function parseVersionResult(stdout: string): string[] | undefined {
  let v: unknown;
  try {
    v = JSON.parse(stdout);
  } catch {
    return undefined;
  }
  if (!isRecord(v) || !Array.isArray(v.supportedVersions)) return undefined;
  const versions = v.supportedVersions.filter((x): x is string => typeof x === 'string');
  return versions.length === v.supportedVersions.length ? versions : undefined;
}

/** A cache file's content; undefined when it is not one of ours. */
export function parseCachedAttachment(text: string): CachedAttachment | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (
    !isRecord(v) ||
    v.kind !== 'cniCacheV1' ||
    typeof v.containerId !== 'string' ||
    typeof v.ifName !== 'string' ||
    typeof v.networkName !== 'string' ||
    !isRecord(v.result)
  ) {
    return undefined;
  }
  return v as unknown as CachedAttachment;
}

/** CNI_ARGS for a Kubernetes pod, in the order kubelet's dockershim/CRI sends them. */
export function k8sCniArgs(pod: {
  namespace: string;
  name: string;
  uid: string;
  infraContainerId: string;
}): [string, string][] {
  return [
    ['IgnoreUnknown', '1'],
    ['K8S_POD_NAMESPACE', pod.namespace],
    ['K8S_POD_NAME', pod.name],
    ['K8S_POD_INFRA_CONTAINER_ID', pod.infraContainerId],
    ['K8S_POD_UID', pod.uid],
  ];
}
