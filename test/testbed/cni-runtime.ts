// A small CNI runtime that follows the spec the way libcni does: ADD/DEL/CHECK over a conflist with
// prevResult chaining and a result cache, STATUS/GC (1.1.0) on plugins whose VERSION says they support it.
import { access, constants, mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { constants as osConstants } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import {
  type CachedAttachment,
  type CniCommand,
  type CniConfList,
  CniPluginError,
  type CniPluginConf,
  type CniResult,
  CniRuntimeError,
  type GcAttachment,
  type PluginInvocation,
  type RuntimeConf,
  parseCachedAttachment,
  parseCniErrorBody,
  parseCniResult,
  parseVersionResult,
} from './cni-types.js';
import { type ChildOutcome, MAX_TOOL_OUTPUT, runChild } from '../../agent/src/platform/exec.js';
import { netnsPath } from './netns.js';

/** Bound on a plugin's stdout and stderr each (a result is a few KB). */
const PLUGIN_OUTPUT_BOUND = MAX_TOOL_OUTPUT;

/** A signal's name (SIGKILL) from its number, as errors show it. */
function signalName(signo: number | undefined): string | undefined {
  if (signo === undefined) return undefined;
  return Object.entries(osConstants.signals).find(([, n]) => n === signo)?.[0] ?? `signal ${signo}`;
}

export interface CniRuntimeOptions {
  conflist: CniConfList;
  /** Directories searched for plugin executables, in order; joined with ':' as CNI_PATH. */
  binDirs: string[];
  /** Where results are cached (`<containerId>-<ifname>.json`). */
  cacheDir: string;
  /**
   * Named netns the plugins run in (started there: /run/netns/<name>); null runs them in the caller's netns. Only the
   * network namespace is the node's: a plugin sees the caller's mounts, so `/sys/class/net` lists the caller's devices
   * (as under a runtime on a real node, `/proc/sys/net` follows the plugin's network namespace; the reference `bridge`
   * and `host-local` use only that and netlink).
   */
  netns: string | null;
  /** Per plugin invocation; default 30 s. */
  timeoutMs?: number;
}

export interface CallOptions {
  /** Per plugin invocation; overrides the runtime's default. */
  timeoutMs?: number;
}

export interface CniOpOutcome {
  /** Every plugin execution in order, with its duration. */
  invocations: PluginInvocation[];
  /** Wall time of the whole operation. */
  durationMs: number;
}

export interface CniAddOutcome extends CniOpOutcome {
  /** The last plugin's result (also cached). */
  result: CniResult;
}

export interface CniPluginSupport {
  plugin: string;
  supportedVersions: string[];
  /** True when STATUS/GC was run on this plugin (it supports 1.1.0). */
  ran: boolean;
}

export interface CniStatusOutcome extends CniOpOutcome {
  plugins: CniPluginSupport[];
}

export interface CniGcOutcome extends CniOpOutcome {
  plugins: CniPluginSupport[];
  /** What was passed as `cni.dev/valid-attachments`. */
  validAttachments: GcAttachment[];
  /** Cached attachments not in validAttachments that got a DEL first (libcni does this). */
  deleted: GcAttachment[];
}

export interface GcOptions extends CallOptions {
  /** Default: every attachment in the cache. */
  validAttachments?: GcAttachment[];
  /** DEL cached attachments missing from an explicit validAttachments before GC, as libcni does. Default true. */
  delStale?: boolean;
}

export interface DelOptions extends CallOptions {
  /** Keep going through the list after a plugin fails (libcni stops); errors are thrown at the end. */
  continueOnError?: boolean;
}

const GC_VERSION = '1.1.0';
const DEFAULT_TIMEOUT_MS = 30_000;

/** The runtime for one conflist on one node. Safe to use concurrently for different attachments. */
export class CniRuntime {
  readonly conflist: CniConfList;
  readonly binDirs: string[];
  readonly cacheDir: string;
  readonly netns: string | null;
  readonly timeoutMs: number;

  constructor(opts: CniRuntimeOptions) {
    if (opts.conflist.plugins.length === 0) throw new CniRuntimeError(`conflist ${opts.conflist.name} has no plugins`);
    this.conflist = opts.conflist;
    this.binDirs = opts.binDirs;
    this.cacheDir = opts.cacheDir;
    this.netns = opts.netns;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  }

  /**
   * ADD through the list in order, each plugin getting the previous result as prevResult. On a plugin
   * failure, DEL runs for the whole list (best effort, every plugin) and the CniPluginError is thrown
   * with `rollbackErrors` set. On success the last result is cached and returned.
   */
  async add(rt: RuntimeConf, opts: CallOptions = {}): Promise<CniAddOutcome> {
    const t0 = performance.now();
    const invocations: PluginInvocation[] = [];
    let prev: CniResult | undefined;
    for (const plugin of this.conflist.plugins) {
      try {
        const out = await this.#invoke('ADD', plugin, this.#pluginConf(plugin, this.conflist.cniVersion, rt, prev), rt, opts);
        invocations.push(out.invocation);
        const result = parseCniResult(out.stdout);
        if (result === undefined) {
          throw new CniPluginError('ADD', plugin.type, 'bad-output', {
            stdout: out.stdout,
            stderr: out.invocation.stderr,
            exitCode: out.invocation.exitCode,
          });
        }
        prev = result;
      } catch (err) {
        const rollback = await this.#delList(rt, undefined, opts, true);
        invocations.push(...rollback.invocations);
        if (err instanceof CniPluginError) err.rollbackErrors = rollback.errors;
        throw err;
      }
    }
    if (prev === undefined) throw new CniRuntimeError('ADD produced no result');
    await this.#writeCache(rt, prev);
    return { result: prev, invocations, durationMs: performance.now() - t0 };
  }

  /** DEL through the list in reverse with the cached result as prevResult; removes the cache entry on success. */
  async del(rt: RuntimeConf, opts: DelOptions = {}): Promise<CniOpOutcome> {
    const t0 = performance.now();
    const cached = await this.readCache(rt.containerId, rt.ifname);
    const { invocations, errors } = await this.#delList(rt, cached?.result, opts, opts.continueOnError ?? false);
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) throw new AggregateError(errors, `CNI DEL failed in ${errors.length} plugins`);
    await rm(this.#cachePath(rt.containerId, rt.ifname), { force: true });
    return { invocations, durationMs: performance.now() - t0 };
  }

  /** CHECK through the list in order with the cached result as prevResult. */
  async check(rt: RuntimeConf, opts: CallOptions = {}): Promise<CniOpOutcome> {
    const t0 = performance.now();
    if (this.conflist.disableCheck === true) return { invocations: [], durationMs: 0 };
    const cached = await this.readCache(rt.containerId, rt.ifname);
    if (cached === undefined) {
      throw new CniRuntimeError(`CHECK: no cached result for ${rt.containerId}/${rt.ifname} (was ADD run?)`);
    }
    const invocations: PluginInvocation[] = [];
    for (const plugin of this.conflist.plugins) {
      const conf = this.#pluginConf(plugin, this.conflist.cniVersion, rt, cached.result);
      invocations.push((await this.#invoke('CHECK', plugin, conf, rt, opts)).invocation);
    }
    return { invocations, durationMs: performance.now() - t0 };
  }

  /** STATUS on every plugin that supports spec 1.1.0 (after asking each with VERSION). */
  async status(opts: CallOptions = {}): Promise<CniStatusOutcome> {
    const t0 = performance.now();
    const { plugins, invocations } = await this.#versions(opts);
    for (const [i, plugin] of this.conflist.plugins.entries()) {
      const support = plugins[i];
      if (support === undefined || !support.ran) continue;
      const conf = this.#pluginConf(plugin, GC_VERSION, undefined, undefined);
      invocations.push((await this.#invoke('STATUS', plugin, conf, undefined, opts)).invocation);
    }
    return { plugins, invocations, durationMs: performance.now() - t0 };
  }

  /**
   * GC like libcni: DEL cached attachments that are not valid (only when validAttachments is given),
   * then GC on every plugin that supports 1.1.0 with `cni.dev/valid-attachments`.
   */
  async gc(opts: GcOptions = {}): Promise<CniGcOutcome> {
    const t0 = performance.now();
    const invocations: PluginInvocation[] = [];
    const cached = await this.cachedAttachments();
    const deleted: GcAttachment[] = [];
    const valid = opts.validAttachments ?? cached.map((c) => ({ containerID: c.containerId, ifname: c.ifName }));
    if (this.conflist.disableGC === true) {
      return { plugins: [], invocations, validAttachments: valid, deleted, durationMs: 0 };
    }
    if (opts.validAttachments !== undefined && (opts.delStale ?? true)) {
      const keep = new Set(valid.map((a) => `${a.containerID}\0${a.ifname}`));
      for (const c of cached) {
        if (keep.has(`${c.containerId}\0${c.ifName}`)) continue;
        const rt: RuntimeConf = { containerId: c.containerId, ifname: c.ifName, netns: c.netns, args: c.cniArgs };
        invocations.push(...(await this.del(rt, opts)).invocations);
        deleted.push({ containerID: c.containerId, ifname: c.ifName });
      }
    }
    const versions = await this.#versions(opts);
    invocations.push(...versions.invocations);
    for (const [i, plugin] of this.conflist.plugins.entries()) {
      if (versions.plugins[i]?.ran !== true) continue;
      const conf = { ...this.#pluginConf(plugin, GC_VERSION, undefined, undefined), 'cni.dev/valid-attachments': valid };
      invocations.push((await this.#invoke('GC', plugin, conf, undefined, opts)).invocation);
    }
    return { plugins: versions.plugins, invocations, validAttachments: valid, deleted, durationMs: performance.now() - t0 };
  }

  /** VERSION of one plugin: the spec versions it supports. */
  async version(plugin: CniPluginConf, opts: CallOptions = {}): Promise<{ supportedVersions: string[]; invocation: PluginInvocation }> {
    const out = await this.#invoke('VERSION', plugin, { cniVersion: this.conflist.cniVersion }, undefined, opts);
    const supportedVersions = parseVersionResult(out.stdout);
    if (supportedVersions === undefined) {
      throw new CniPluginError('VERSION', plugin.type, 'bad-output', {
        stdout: out.stdout,
        stderr: out.invocation.stderr,
        exitCode: out.invocation.exitCode,
      });
    }
    return { supportedVersions, invocation: out.invocation };
  }

  /** The cache entry of one attachment, or undefined. */
  async readCache(containerId: string, ifname: string): Promise<CachedAttachment | undefined> {
    let text: string;
    try {
      text = await readFile(this.#cachePath(containerId, ifname), 'utf8');
    } catch (err) {
      if (err instanceof Error && 'code' in err && err.code === 'ENOENT') return undefined;
      throw err;
    }
    const parsed = parseCachedAttachment(text);
    if (parsed === undefined) throw new CniRuntimeError(`unparsable cache entry for ${containerId}/${ifname}`);
    return parsed;
  }

  /** Every cached attachment of this network. */
  async cachedAttachments(): Promise<CachedAttachment[]> {
    let names: string[];
    try {
      names = await readdir(this.cacheDir);
    } catch (err) {
      if (err instanceof Error && 'code' in err && err.code === 'ENOENT') return [];
      throw err;
    }
    const out: CachedAttachment[] = [];
    for (const name of names.filter((n) => n.endsWith('.json')).sort()) {
      const parsed = parseCachedAttachment(await readFile(join(this.cacheDir, name), 'utf8').catch(() => ''));
      if (parsed !== undefined && parsed.networkName === this.conflist.name) out.push(parsed);
    }
    return out;
  }

  async #delList(
    rt: RuntimeConf,
    prevResult: CniResult | undefined,
    opts: CallOptions,
    continueOnError: boolean,
  ): Promise<{ invocations: PluginInvocation[]; errors: Error[] }> {
    const invocations: PluginInvocation[] = [];
    const errors: Error[] = [];
    for (const plugin of [...this.conflist.plugins].reverse()) {
      try {
        const conf = this.#pluginConf(plugin, this.conflist.cniVersion, rt, prevResult);
        invocations.push((await this.#invoke('DEL', plugin, conf, rt, opts)).invocation);
      } catch (err) {
        errors.push(err instanceof Error ? err : new Error(String(err)));
        if (!continueOnError) break;
      }
    }
    return { invocations, errors };
  }

  async #versions(opts: CallOptions): Promise<{ plugins: CniPluginSupport[]; invocations: PluginInvocation[] }> {
    const plugins: CniPluginSupport[] = [];
    const invocations: PluginInvocation[] = [];
    for (const plugin of this.conflist.plugins) {
      const v = await this.version(plugin, opts);
      invocations.push(v.invocation);
      plugins.push({ plugin: plugin.type, supportedVersions: v.supportedVersions, ran: v.supportedVersions.includes(GC_VERSION) });
    }
    return { plugins, invocations };
  }

  /** The plugin's config as the spec wants it on stdin: list name and version injected, prevResult, runtimeConfig. */
  #pluginConf(
    plugin: CniPluginConf,
    cniVersion: string,
    rt: RuntimeConf | undefined,
    prevResult: CniResult | undefined,
  ): Record<string, unknown> {
    const conf: Record<string, unknown> = { ...plugin, cniVersion, name: this.conflist.name };
    if (prevResult !== undefined) conf.prevResult = prevResult;
    const caps = plugin.capabilities;
    if (rt?.capabilityArgs !== undefined && typeof caps === 'object' && caps !== null) {
      const runtimeConfig: Record<string, unknown> = {};
      for (const [key, enabled] of Object.entries(caps)) {
        if (enabled === true && key in rt.capabilityArgs) runtimeConfig[key] = rt.capabilityArgs[key];
      }
      if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
    }
    return conf;
  }

  async #findPlugin(type: string): Promise<string | undefined> {
    if (type.includes('/')) return undefined; // the spec forbids paths in `type`
    for (const dir of this.binDirs) {
      const candidate = join(dir, type);
      try {
        await access(candidate, constants.X_OK);
        return candidate;
      } catch {
        // not in this dir
      }
    }
    return undefined;
  }

  async #invoke(
    command: CniCommand,
    plugin: CniPluginConf,
    conf: Record<string, unknown>,
    rt: RuntimeConf | undefined,
    opts: CallOptions,
  ): Promise<{ stdout: string; invocation: PluginInvocation }> {
    const path = await this.#findPlugin(plugin.type);
    if (path === undefined) {
      throw new CniPluginError(command, plugin.type, 'not-found', {
        stdout: '',
        stderr: `failed to find plugin "${plugin.type}" in path [${this.binDirs.join(' ')}]`,
      });
    }
    const env: Record<string, string> = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (v !== undefined && !k.startsWith('CNI_')) env[k] = v;
    }
    env.CNI_COMMAND = command;
    env.CNI_PATH = this.binDirs.join(':');
    if (rt !== undefined && (command === 'ADD' || command === 'DEL' || command === 'CHECK')) {
      env.CNI_CONTAINERID = rt.containerId;
      env.CNI_NETNS = rt.netns;
      env.CNI_IFNAME = rt.ifname;
      env.CNI_ARGS = (rt.args ?? []).map(([k, v]) => `${k}=${v}`).join(';');
    }
    const t0 = performance.now();
    // Started as a Go runtime's os/exec starts a plugin (vfork semantics: posix_spawn), directly in the node's namespace
    // (a spawner thread enters it first), the way a runtime on a real node runs plugins in its own: no fork of this
    // process, whose cost grows with its memory, and no `ip netns exec` (a dynamically linked exec and a new mount
    // namespace) before each plugin, neither of which a real runtime pays.
    let r: ChildOutcome;
    try {
      r = await runChild(path, [path], env, {
        ...(this.netns === null ? {} : { netns: netnsPath(this.netns) }),
        input: JSON.stringify(conf),
        timeoutMs: opts.timeoutMs ?? this.timeoutMs,
        maxOutput: PLUGIN_OUTPUT_BOUND,
      });
    } catch (err) {
      // Not started (not executable, the node's namespace gone): as a runtime reports a plugin it could not exec.
      throw new CniPluginError(command, plugin.type, 'crashed', { stdout: '', stderr: `cannot start ${path}: ${(err as Error).message}`, cause: err });
    }
    const stdout = r.stdout;
    const stderr = r.cutBy === 'output' ? `${r.stderr}${r.stderr ? '; ' : ''}${r.cut}` : r.stderr;
    const exitCode = r.exit.code;
    const signal = signalName(r.exit.signal);
    const invocation: PluginInvocation = {
      plugin: plugin.type,
      command,
      durationMs: performance.now() - t0,
      exitCode,
      stderr,
    };
    if (r.cutBy === 'timeout') {
      throw new CniPluginError(command, plugin.type, 'timeout', { stdout, stderr, cause: r });
    }
    if (r.cut !== undefined || exitCode !== 0) {
      // Killed for its output: whatever its stdout holds, it did not finish.
      const cniError = r.cut === undefined ? parseCniErrorBody(stdout) : undefined;
      if (cniError !== undefined) {
        throw new CniPluginError(command, plugin.type, 'plugin-error', { cniError, stdout, stderr, exitCode });
      }
      throw new CniPluginError(command, plugin.type, 'crashed', {
        stdout,
        stderr: stderr || `${path} ${signal === undefined ? `exited ${exitCode}` : `killed by ${signal}`}`,
        exitCode,
        ...(signal !== undefined ? { signal } : {}),
      });
    }
    if (stdout.trim() !== '' && !isJson(stdout)) {
      throw new CniPluginError(command, plugin.type, 'bad-output', { stdout, stderr, exitCode });
    }
    return { stdout, invocation };
  }

  #cachePath(containerId: string, ifname: string): string {
    return join(this.cacheDir, `${containerId}-${ifname}.json`);
  }

  async #writeCache(rt: RuntimeConf, result: CniResult): Promise<void> {
    const entry: CachedAttachment = {
      kind: 'cniCacheV1',
      containerId: rt.containerId,
      ifName: rt.ifname,
      networkName: this.conflist.name,
      netns: rt.netns,
      cniArgs: (rt.args ?? []).map(([k, v]) => [k, v]),
      config: this.conflist,
      result,
    };
    await mkdir(this.cacheDir, { recursive: true });
    const path = this.#cachePath(rt.containerId, rt.ifname);
    const tmp = `${path}.tmp-${process.pid}`;
    await writeFile(tmp, JSON.stringify(entry, null, 2));
    await rename(tmp, path);
  }
}

function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}
