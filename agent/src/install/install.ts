// File-system side of the installer: copies the plugin binaries into the CNI bin dir and writes the primary CNI config
// with ambient-cni last, both atomically (temp file in the same dir + rename); uninstall; a read-only install check.
import { createHash, randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import { access, chmod, chown, open, readFile, readdir, rename, stat, unlink } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { JsonObject } from '../../../cni/src/config.js';
import type { Logger } from '../log.js';
import {
  InstallError,
  insertPlugin,
  isConfigFileName,
  isInstalled,
  parseConfigFile,
  pinnedNames,
  removePlugin,
  selectPrimary,
  type Candidate,
  type Selection,
} from './cni-config.js';

/** What goes into the CNI bin dir, in copy order: the fallbacks first, so the front never exists without one. */
export const PLUGIN_FILES = {
  /** The plugin as a Node single executable application: needs no Node on the host. */
  standalone: 'ambient-cni-standalone',
  /** The plugin as one ES module: needs `node` on the host's PATH (development installs). */
  module: 'ambient-cni.mjs',
  /** The native front: the file the runtime executes (fast path through the agent, falls back to the above). */
  front: 'ambient-cni',
} as const;

export interface InstallOptions {
  /** Where the plugin binaries come from (the build's dist/bin, or the image's copy of it). */
  sourceDir: string;
  /** The host's CNI bin dir. */
  binDir: string;
  /** The host's CNI conf dir. */
  confDir: string;
  /** Pin the primary config to this file name (its .conf/.conflist twin is accepted). */
  pinnedName?: string;
  /** The ambient-cni entry, from pluginEntry(). */
  entry: JsonObject;
  /** Remembers file digests between runs (the watcher passes one): the standalone executable is ~85 MB. */
  digests?: DigestCache;
}

/** sha256 of files by (path, inode, size, mtime): a file is read again only when one of those changed. */
export class DigestCache {
  readonly #known = new Map<string, { key: string; digest: string }>();

  async digest(path: string): Promise<string | undefined> {
    const st = await stat(path).catch(() => undefined);
    if (!st) return undefined;
    const key = `${st.ino}:${st.size}:${st.mtimeMs}`;
    const hit = this.#known.get(path);
    if (hit?.key === key) return hit.digest;
    const digest = sha256(await readFile(path));
    this.#known.set(path, { key, digest });
    return digest;
  }
}

export interface InstallReport {
  primary: string;
  /** True when the config file was (re)written. */
  wroteConfig: boolean;
  copied: string[];
  skipped: Selection['skipped'];
}

/** Copies the binaries (when they differ) and makes sure the primary config runs ambient-cni last. Idempotent. */
export async function installCni(opts: InstallOptions, log: Logger): Promise<InstallReport> {
  const copied = await installBinaries(opts.sourceDir, opts.binDir, opts.digests);
  for (const name of copied) log.info({ binary: join(opts.binDir, name) }, 'plugin binary installed');
  const { report } = await installConfig(opts, log);
  return { ...report, copied };
}

/** Copies the plugin files present in sourceDir into binDir, each only when its content differs. Returns the names copied. */
export async function installBinaries(sourceDir: string, binDir: string, digests = new DigestCache()): Promise<string[]> {
  await removeStaleTemps(binDir, (n) => n.startsWith(`.${PLUGIN_FILES.front}`));
  const present: string[] = [];
  for (const name of Object.values(PLUGIN_FILES)) {
    if (await exists(join(sourceDir, name))) present.push(name);
  }
  if (!present.includes(PLUGIN_FILES.front)) {
    throw new InstallError('AMB_ERR_CNI_INSTALL_IO', `${join(sourceDir, PLUGIN_FILES.front)} is missing: build the plugin (scripts/build.sh) or point --source-dir at it`);
  }
  if (present.length < 2) {
    throw new InstallError('AMB_ERR_CNI_INSTALL_IO', `${sourceDir} has the native front but neither ${PLUGIN_FILES.standalone} nor ${PLUGIN_FILES.module} for its fallback`);
  }
  const copied: string[] = [];
  for (const name of present) {
    const dst = join(binDir, name);
    const want = await digests.digest(join(sourceDir, name));
    const mode = await stat(dst).then((st) => st.mode & 0o777, () => undefined);
    if (mode === 0o755 && (await digests.digest(dst)) === want) continue;
    await atomicWrite(dst, await readFile(join(sourceDir, name)), 0o755);
    copied.push(name);
  }
  return copied;
}

/**
 * Makes sure the primary config runs ambient-cni last. Throws AMB_ERR_CNI_NO_PRIMARY when the conf dir holds no valid
 * config (yet), AMB_ERR_CNI_CONFIG_MALFORMED when a pinned file is invalid; an invalid file is never written.
 */
export async function installConfig(opts: InstallOptions, log: Logger): Promise<{ report: Omit<InstallReport, 'copied'> }> {
  await removeStaleTemps(opts.confDir, (n) => n.includes(TEMP_MARK));
  const candidates = await readCandidates(opts.confDir);
  const sel = selectPrimary(candidates, opts.pinnedName);
  for (const s of sel.skipped) log.warn({ file: join(opts.confDir, s.name), reason: s.reason }, 'CNI config skipped, as the runtime skips it');
  const primary = sel.primary;
  if (!primary) {
    if (opts.pinnedName !== undefined && sel.skipped.length > 0) {
      throw new InstallError('AMB_ERR_CNI_CONFIG_MALFORMED', sel.skipped.map((s) => s.reason).join('; '));
    }
    const what = opts.pinnedName !== undefined ? `${pinnedNames(opts.pinnedName).join(' or ')}` : 'no valid .conf, .conflist or .json file';
    throw new InstallError('AMB_ERR_CNI_NO_PRIMARY', `${opts.confDir}: ${what} yet; the primary CNI has not written its config`);
  }
  const path = join(opts.confDir, primary.name);
  const before = await stat(path);
  const out = insertPlugin(primary, opts.entry);
  if (!out.changed) return { report: { primary: path, wroteConfig: false, skipped: sel.skipped } };
  const target = join(opts.confDir, out.name);
  await atomicWrite(target, out.text, before.mode & 0o7777, { uid: before.uid, gid: before.gid }, async () => {
    // Someone rewrote the primary between our read and our rename: do not clobber their newer content.
    const now = await stat(path).catch(() => undefined);
    if (!now || now.ino !== before.ino || now.mtimeMs !== before.mtimeMs || now.size !== before.size) {
      throw new InstallError('AMB_ERR_CNI_INSTALL_IO', `${path} changed while ambient-cni was being added; retrying`);
    }
  });
  if (out.name !== primary.name) await unlink(path).catch(ignoreEnoent);
  log.info({ file: target, from: out.name !== primary.name ? path : undefined }, 'ambient-cni added last to the primary CNI config');
  return { report: { primary: target, wroteConfig: true, skipped: sel.skipped } };
}

export interface CheckResult {
  ok: boolean;
  primary?: string;
  problems: string[];
}

/** Read-only: is the plugin installed (binaries present and executable, primary config ends with exactly our entry)? */
export async function checkInstalled(opts: InstallOptions): Promise<CheckResult> {
  const problems: string[] = [];
  for (const name of [PLUGIN_FILES.front]) {
    if (!(await exists(join(opts.binDir, name), constants.X_OK))) problems.push(`${join(opts.binDir, name)} is missing or not executable`);
  }
  const fallbacks = await Promise.all([PLUGIN_FILES.standalone, PLUGIN_FILES.module].map((n) => exists(join(opts.binDir, n))));
  if (!fallbacks.some(Boolean)) problems.push(`${opts.binDir} has no fallback for the native front (${PLUGIN_FILES.standalone})`);
  const sel = selectPrimary(await readCandidates(opts.confDir), opts.pinnedName);
  if (!sel.primary) problems.push(`${opts.confDir} has no valid primary CNI config`);
  else if (!isInstalled(sel.primary, opts.entry)) problems.push(`${join(opts.confDir, sel.primary.name)} does not run ambient-cni last with the configured settings`);
  return { ok: problems.length === 0, ...(sel.primary ? { primary: join(opts.confDir, sel.primary.name) } : {}), problems };
}

export interface UninstallReport {
  configs: string[];
  removed: string[];
}

/**
 * Removes ambient-cni from every config file in the conf dir that lists it (the primary may have changed since the
 * install), then the binaries: never the other way round, or every pod ADD would fail on a missing plugin.
 */
export async function uninstallCni(opts: Pick<InstallOptions, 'binDir' | 'confDir'>, log: Logger): Promise<UninstallReport> {
  const configs: string[] = [];
  for (const c of await readCandidates(opts.confDir)) {
    if (!c.text.includes('ambient-cni')) continue;
    const path = join(opts.confDir, c.name);
    let cfg;
    try {
      cfg = parseConfigFile(c.name, c.text);
    } catch (err) {
      log.warn({ file: path, err }, 'CNI config not parseable; left untouched');
      continue;
    }
    const out = removePlugin(cfg);
    if (!out.changed) continue;
    const st = await stat(path);
    await atomicWrite(path, out.text, st.mode & 0o7777, { uid: st.uid, gid: st.gid });
    configs.push(path);
    log.info({ file: path }, 'ambient-cni removed from the CNI config');
  }
  const removed: string[] = [];
  for (const name of [PLUGIN_FILES.front, PLUGIN_FILES.standalone, PLUGIN_FILES.module]) {
    const path = join(opts.binDir, name);
    try {
      await unlink(path);
      removed.push(path);
      log.info({ binary: path }, 'plugin binary removed');
    } catch (err) {
      ignoreEnoent(err);
    }
  }
  return { configs, removed };
}

/** Temp files carry this mark and a leading dot, so no runtime loads them (wrong extension) and stale ones are found. */
const TEMP_MARK = '.ambient-tmp-';

/**
 * Writes `data` to `path` through a temp file in the same dir: written, chmod'ed, fsync'ed, then renamed over the
 * target, so readers see the old file or the new one, never a part. `beforeRename` may veto (throw) at the last moment.
 */
export async function atomicWrite(
  path: string,
  data: string | Buffer,
  mode: number,
  owner?: { uid: number; gid: number },
  beforeRename?: () => Promise<void>,
): Promise<void> {
  const dir = join(path, '..');
  const tmp = join(dir, `.${basename(path)}${TEMP_MARK}${process.pid}-${randomBytes(4).toString('hex')}`);
  try {
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    // Keep the owner where we may (the installer's container drops CAP_CHOWN; root-owned files need none).
    if (owner && process.getuid?.() === 0) await chown(tmp, owner.uid, owner.gid).catch((err: unknown) => {
      if (!isErrno(err, 'EPERM')) throw err;
    });
    await chmod(tmp, mode);
    await beforeRename?.();
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    if (err instanceof InstallError) throw err;
    const hint = isErrno(err, 'EROFS') ? ' (read-only file system: is the host dir mounted read-write?)' : '';
    throw new InstallError('AMB_ERR_CNI_INSTALL_IO', `writing ${path} failed${hint}`, { cause: err });
  }
}

async function readCandidates(dir: string): Promise<Candidate[]> {
  let names: string[];
  try {
    names = await readdir(dir);
  } catch (err) {
    throw new InstallError('AMB_ERR_CNI_INSTALL_IO', `cannot read the CNI conf dir ${dir}`, { cause: err });
  }
  const out: Candidate[] = [];
  for (const name of names.filter(isConfigFileName)) {
    // A file that vanished or is a directory is simply not a candidate.
    const text = await readFile(join(dir, name), 'utf8').catch(() => undefined);
    if (text !== undefined) out.push({ name, text });
  }
  return out;
}

async function removeStaleTemps(dir: string, match: (name: string) => boolean): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  const mine = names.filter((n) => n.startsWith('.') && n.includes(TEMP_MARK) && match(n));
  await Promise.all(mine.map((n) => unlink(join(dir, n)).catch(() => undefined)));
}

async function exists(path: string, mode = constants.F_OK): Promise<boolean> {
  return access(path, mode).then(() => true, () => false);
}

function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

function isErrno(err: unknown, code: string): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;
}

function ignoreEnoent(err: unknown): void {
  if (!isErrno(err, 'ENOENT')) throw err;
}
