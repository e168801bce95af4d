// Pure CNI network-config logic of the installer: which file in the conf dir is the primary one (as the runtime picks
// it), and that file's text with the ambient-cni entry appended last or removed. No file system access here.
import { CONFIG_DEFAULTS, parseNetConf, type JsonObject, type JsonValue, type LogLevel } from '../../../cni/src/config.js';
import { CniError } from '../../../cni/src/errors.js';
import { AmbientError } from '../errors.js';

/** The `type` of our entry, which is also the binary's name in the CNI bin dir. */
export const PLUGIN_TYPE = 'ambient-cni';

/** Extensions the runtime loads (libcni's ConfFiles as containerd and CRI-O call it): `.json` reads like `.conf`. */
export const CONFIG_EXTENSIONS = ['.conf', '.conflist', '.json'] as const;

export type InstallErrorCode = 'AMB_ERR_CNI_CONFIG_MALFORMED' | 'AMB_ERR_CNI_NO_PRIMARY' | 'AMB_ERR_CNI_PLUGIN_SETTINGS' | 'AMB_ERR_CNI_INSTALL_IO';

export class InstallError extends AmbientError<InstallErrorCode> {}

/** Values for our entry; absent ones take the plugin's defaults, written out so operators see them in the file. */
export interface PluginSettings {
  agentSocket?: string;
  agentTimeoutMs?: number;
  excludeNamespaces?: string[];
  agentNamespace?: string;
  logLevel?: LogLevel;
}

/** The ambient-cni entry of a conflist, checked with the plugin's own parser so a bad value fails here, not per pod. */
export function pluginEntry(s: PluginSettings = {}): JsonObject {
  const entry: JsonObject = {
    type: PLUGIN_TYPE,
    agent_socket: s.agentSocket ?? CONFIG_DEFAULTS.agent_socket,
    agent_timeout_ms: s.agentTimeoutMs ?? CONFIG_DEFAULTS.agent_timeout_ms,
    exclude_namespaces: [...(s.excludeNamespaces ?? CONFIG_DEFAULTS.exclude_namespaces)],
    agent_namespace: s.agentNamespace ?? CONFIG_DEFAULTS.agent_namespace,
    log_level: s.logLevel ?? CONFIG_DEFAULTS.log_level,
  };
  try {
    parseNetConf({ cniVersion: '1.0.0', name: 'check', ...entry });
  } catch (err) {
    if (!(err instanceof CniError)) throw err;
    throw new InstallError('AMB_ERR_CNI_PLUGIN_SETTINGS', `ambient-cni entry: ${err.message}`, { cause: err });
  }
  return entry;
}

export type ConfigKind = 'conf' | 'conflist';

/** A config file the runtime would load, parsed. */
export interface ParsedConfig {
  name: string;
  kind: ConfigKind;
  doc: JsonObject;
}

export function isConfigFileName(name: string): boolean {
  return !name.startsWith('.') && CONFIG_EXTENSIONS.some((ext) => name.endsWith(ext));
}

/** The file the runtime would load, or an InstallError (AMB_ERR_CNI_CONFIG_MALFORMED) saying why it would not. */
export function parseConfigFile(name: string, text: string): ParsedConfig {
  const kind: ConfigKind = name.endsWith('.conflist') ? 'conflist' : 'conf';
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw malformed(name, `is not valid JSON (${err instanceof Error ? err.message : String(err)})`, err);
  }
  if (!isObject(doc)) throw malformed(name, 'is not a JSON object');
  if (kind === 'conf') {
    if (typeof doc.type !== 'string' || doc.type === '') throw malformed(name, 'has no "type" (a single network config needs one)');
    return { name, kind, doc };
  }
  if (typeof doc.name !== 'string' || doc.name === '') throw malformed(name, 'has no "name"');
  const plugins = doc.plugins;
  if (!Array.isArray(plugins) || plugins.length === 0) throw malformed(name, 'has no "plugins" list, or an empty one');
  plugins.forEach((p, i) => {
    if (!isObject(p) || typeof p.type !== 'string' || p.type === '') throw malformed(name, `plugins[${i}] has no "type"`);
  });
  return { name, kind, doc };
}

export interface Candidate {
  name: string;
  text: string;
}

export interface Selection {
  /** The primary config file, or undefined when the dir holds no valid one (yet). */
  primary: ParsedConfig | undefined;
  /** Files the runtime would also skip, with why. */
  skipped: { name: string; reason: string }[];
}

/**
 * The primary CNI config as the runtime chooses it: config files sorted by name (byte order, as Go's sort.Strings),
 * the first one that parses and is valid. With `pinned`, only that name counts, or its .conf / .conflist twin (the
 * installer itself turns `x.conf` into `x.conflist`).
 */
export function selectPrimary(candidates: Candidate[], pinned?: string): Selection {
  const skipped: Selection['skipped'] = [];
  let names = candidates.map((c) => c.name).filter(isConfigFileName).sort(byteOrder);
  if (pinned !== undefined) {
    const twins = pinnedNames(pinned);
    names = twins.filter((n) => names.includes(n));
  }
  for (const name of names) {
    const c = candidates.find((x) => x.name === name);
    if (!c) continue;
    try {
      return { primary: parseConfigFile(name, c.text), skipped };
    } catch (err) {
      if (!(err instanceof InstallError)) throw err;
      skipped.push({ name, reason: err.message });
    }
  }
  return { primary: undefined, skipped };
}

/** The names a pinned config may have: itself first, then the .conf <-> .conflist twin. */
export function pinnedNames(pinned: string): string[] {
  if (pinned.endsWith('.conflist')) return [pinned, `${pinned.slice(0, -'.conflist'.length)}.conf`];
  if (pinned.endsWith('.conf')) return [pinned, `${pinned}list`];
  return [pinned];
}

export interface InsertResult {
  /** File name to write: `x.conf` / `x.json` become `x.conflist`. */
  name: string;
  text: string;
  /** False when the file already ends with exactly this entry (nothing to write). */
  changed: boolean;
}

/**
 * The primary config with our entry last. A conflist loses any earlier ambient-cni entries and gets `entry` appended;
 * a single conf becomes a conflist of [the conf without cniVersion/name, entry], keeping its network name and version
 * (the runtime's result cache is keyed by network name, so renaming the network would orphan running pods).
 */
export function insertPlugin(cfg: ParsedConfig, entry: JsonObject): InsertResult {
  if (cfg.kind === 'conf') {
    const { cniVersion, name, ...plugin } = cfg.doc;
    const list: JsonObject = {
      cniVersion: cniVersion ?? '0.3.1',
      name: name ?? 'k8s-pod-network',
      plugins: [plugin, entry],
    };
    return { name: conflistName(cfg.name), text: render(list), changed: true };
  }
  const plugins = pluginsOf(cfg);
  if (isOurs(plugins.at(-1)) && sameJson(plugins.at(-1), entry) && plugins.filter(isOurs).length === 1) {
    return { name: cfg.name, text: render(cfg.doc), changed: false };
  }
  const doc: JsonObject = { ...cfg.doc, plugins: [...plugins.filter((p) => !isOurs(p)), entry] };
  return { name: cfg.name, text: render(doc), changed: true };
}

/** The config without ambient-cni entries; unchanged when there were none. Never leaves an empty plugin list. */
export function removePlugin(cfg: ParsedConfig): { text: string; changed: boolean } {
  if (cfg.kind === 'conf') return { text: render(cfg.doc), changed: false };
  const plugins = pluginsOf(cfg);
  const kept = plugins.filter((p) => !isOurs(p));
  if (kept.length === plugins.length) return { text: render(cfg.doc), changed: false };
  if (kept.length === 0) throw malformed(cfg.name, 'would have no plugins left without ambient-cni; remove the file by hand if that is intended');
  return { text: render({ ...cfg.doc, plugins: kept }), changed: true };
}

/** True when the runtime would run ambient-cni last, with exactly `entry` (the installer's steady state). */
export function isInstalled(cfg: ParsedConfig, entry: JsonObject): boolean {
  if (cfg.kind !== 'conflist') return false;
  const plugins = pluginsOf(cfg);
  return sameJson(plugins.at(-1), entry) && plugins.filter(isOurs).length === 1;
}

export function conflistName(name: string): string {
  if (name.endsWith('.conflist')) return name;
  const dot = name.lastIndexOf('.');
  return `${name.slice(0, dot)}.conflist`;
}

/** Two-space JSON with a final newline, keys in their original order. */
export function render(doc: JsonObject): string {
  return `${JSON.stringify(doc, null, 2)}\n`;
}

function pluginsOf(cfg: ParsedConfig): JsonObject[] {
  // parseConfigFile checked that every member is an object with a type.
  return cfg.doc.plugins as JsonObject[];
}

function isOurs(p: JsonValue | undefined): boolean {
  return isObject(p) && p.type === PLUGIN_TYPE;
}

function sameJson(a: JsonValue | undefined, b: JsonValue): boolean {
  return a !== undefined && canonical(a) === canonical(b);
}

/** JSON with object keys sorted, so equal documents compare equal whatever their key order. */
function canonical(v: JsonValue): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (isObject(v)) return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical(v[k] as JsonValue)}`).join(',')}}`;
  return JSON.stringify(v);
}

function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

function malformed(name: string, problem: string, cause?: unknown): InstallError {
  return new InstallError('AMB_ERR_CNI_CONFIG_MALFORMED', `CNI config ${name} ${problem}; it was left untouched`, { cause });
}

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
