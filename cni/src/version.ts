// What each CNI command demands of its invocation: the spec versions that allow it and the environment it needs.
// Owns the VERSION result and the CNI_* environment parse; it never reads stdin beyond VERSION's cniVersion.
import { CniCode, CniError } from './errors.js';

/** Spec versions this plugin speaks, oldest first (the order gating relies on). */
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
export type CniVersion = (typeof SUPPORTED_VERSIONS)[number];

/** Used when the input names no version we can echo (VERSION without input, undecodable config). */
export const PREFERRED_VERSION: CniVersion = '1.1.0';

export const COMMANDS = ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC', 'VERSION'] as const;
export type CniCommand = (typeof COMMANDS)[number];

/** The oldest spec version that defines each command. */
const INTRODUCED_IN: Record<CniCommand, CniVersion> = {
  ADD: '0.3.0',
  DEL: '0.3.0',
  VERSION: '0.3.0',
  CHECK: '0.4.0',
  STATUS: '1.1.0',
  GC: '1.1.0',
};

/**
 * Environment each command requires (spec 1.1.0 section 2). CNI_PATH is optional for every command in
 * spec 1.x and this plugin never executes a delegate, so its absence is not an error.
 */
const REQUIRED_ENV: Record<CniCommand, readonly string[]> = {
  ADD: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  CHECK: ['CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  DEL: ['CNI_CONTAINERID', 'CNI_IFNAME'],
  STATUS: [],
  GC: [],
  VERSION: [],
};

/** The CNI_* parameters of one invocation, validated. Unused ones are "" (e.g. netns on STATUS). */
export interface CniEnv {
  command: CniCommand;
  containerId: string;
  netns: string;
  ifname: string;
  /** CNI_ARGS verbatim; config.ts parses it. */
  args: string;
  path: string;
}

export function isSupportedVersion(v: string): v is CniVersion {
  return (SUPPORTED_VERSIONS as readonly string[]).includes(v);
}

/** Throws IncompatibleVersion unless this plugin speaks `v`. */
export function assertSupportedVersion(v: string, why = ''): asserts v is CniVersion {
  if (isSupportedVersion(v)) return;
  throw new CniError(CniCode.IncompatibleVersion, `incompatible CNI version ${JSON.stringify(v)}${why}`, {
    details: `ambient-cni supports ${SUPPORTED_VERSIONS.join(', ')}`,
  });
}

/** Throws IncompatibleVersion when the config's version predates the command (e.g. CHECK before 0.4.0). */
export function assertCommandAllowed(command: CniCommand, v: CniVersion): void {
  const since = INTRODUCED_IN[command];
  if (SUPPORTED_VERSIONS.indexOf(v) >= SUPPORTED_VERSIONS.indexOf(since)) return;
  throw new CniError(CniCode.IncompatibleVersion, `config version ${v} does not allow ${command}`, {
    details: `${command} needs cniVersion ${since} or later`,
  });
}

export interface VersionResult {
  cniVersion: string;
  supportedVersions: string[];
}

/**
 * The VERSION result. The spec echoes the input's cniVersion; the input is optional and never an error
 * (runtimes probe with `{"cniVersion": "..."}` or nothing), so anything unreadable falls back to PREFERRED_VERSION.
 */
export function versionResult(stdin: string): VersionResult {
  let requested: unknown;
  try {
    const parsed: unknown = stdin.trim() === '' ? undefined : JSON.parse(stdin);
    if (typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)) {
      requested = (parsed as Record<string, unknown>).cniVersion;
    }
  } catch {
    requested = undefined;
  }
  const cniVersion = typeof requested === 'string' && requested !== '' ? requested : PREFERRED_VERSION;
  return { cniVersion, supportedVersions: [...SUPPORTED_VERSIONS] };
}

// Same rules as libcni's utils.ValidateContainerID / ValidateInterfaceName.
const CONTAINER_ID = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;
const IFNAME_BAD = /[/:\s]/;

/** Reads and validates the CNI_* variables; every failure is InvalidEnv naming the variable. */
export function parseEnv(env: Record<string, string | undefined>): CniEnv {
  const raw = env.CNI_COMMAND ?? '';
  if (raw === '') throw new CniError(CniCode.InvalidEnv, 'required environment variable CNI_COMMAND missing');
  if (!(COMMANDS as readonly string[]).includes(raw)) {
    throw new CniError(CniCode.InvalidEnv, `unknown CNI_COMMAND ${JSON.stringify(raw)}`, {
      details: `CNI_COMMAND must be one of ${COMMANDS.join(', ')}`,
    });
  }
  const command = raw as CniCommand;

  const missing = REQUIRED_ENV[command].filter((name) => (env[name] ?? '') === '');
  if (missing.length > 0) {
    const noun = missing.length === 1 ? 'variable' : 'variables';
    throw new CniError(CniCode.InvalidEnv, `required environment ${noun} ${missing.join(', ')} missing for ${command}`);
  }

  const parsed: CniEnv = {
    command,
    containerId: env.CNI_CONTAINERID ?? '',
    netns: env.CNI_NETNS ?? '',
    ifname: env.CNI_IFNAME ?? '',
    args: env.CNI_ARGS ?? '',
    path: env.CNI_PATH ?? '',
  };
  if (parsed.containerId !== '' && !CONTAINER_ID.test(parsed.containerId)) {
    throw new CniError(CniCode.InvalidEnv, 'invalid characters in CNI_CONTAINERID', { details: parsed.containerId });
  }
  if (parsed.ifname !== '') assertIfname(parsed.ifname);
  return parsed;
}

function assertIfname(ifname: string): void {
  const problem =
    ifname === '.' || ifname === '..'
      ? 'must not be "." or ".."'
      : ifname.length > 15
        ? 'is longer than 15 characters'
        : IFNAME_BAD.test(ifname)
          ? 'contains "/", ":" or whitespace'
          : undefined;
  if (problem) throw new CniError(CniCode.InvalidEnv, `CNI_IFNAME ${problem}`, { details: ifname });
}
