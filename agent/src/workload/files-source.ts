// The `files` workload source: a folder of Kubernetes-shaped YAML (Pod, Namespace, policies, Service, EndpointSlice),
// a file re-read only when its stamp changes and applied on its own, object by object: a malformed object keeps its
// previous good version in force; a new malformed AuthorizationPolicy or PeerAuthentication (even one that is not valid
// YAML) stands as a fail-closed placeholder until fixed; a file with any other invalid YAML keeps all its previous
// objects in force; other kinds are logged once. Watched (inotify); a safety check stats the directory every 2 s and each
// file once per 30 s, a slice at a time: the bound on applying a change the watch missed (see the constructor).
import { constants, watch, type FSWatcher, type Stats } from 'node:fs';
import { open, readdir, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { CORE_SCHEMA, loadAll } from 'js-yaml';
import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import type { Logger } from '../log.js';
import type { WorkloadChange, WorkloadSource } from './source.js';
import { fromK8sObject, type NamespaceInfo, type PodInfo, type WorkloadObject } from './types.js';
import { malformedPeerAuthentication, type PeerAuthentication } from '../policy/peer-authentication.js';
import { malformedAuthorizationPolicy, type AuthorizationPolicy } from '../policy/authorization.js';
import type { EndpointSliceInfo, ServiceInfo } from './service-objects.js';
import { PodWaiters } from './pod-waiters.js';
import { FileUnion, type Held } from './file-union.js';
import { sameValue } from './same-value.js';
import { failClosedEffect, MALFORMED_POLICY_MSG } from '../policy/malformed.js';

const YAML_FILE = /\.(ya?ml|json)$/;
/** The names a scan reads: YAML or JSON, not hidden (a ConfigMap volume's `..data` and an atomic writer's temp files are). */
const readsFile = (name: string): boolean => YAML_FILE.test(name) && !name.startsWith('.');
/** Files the watch named that wait for one check at most; past it a full rescan replaces them. */
const MAX_PENDING_CHECKS = 1000;
/** Changed files read at once during a rescan (see rescan): at most this many, and this many bytes (by their stat). */
const READ_WINDOW = 32;
const READ_WINDOW_BYTES = 16 * 1024 * 1024;

/**
 * The largest workload file read (bytes): a bigger one is not read, and its previous objects stay in force. 50,000 pods
 * in one file are ~12 MiB of YAML; the bound keeps a runaway file (a log written into the folder) out of memory.
 */
export const MAX_FILE_BYTES = 64 * 1024 * 1024;

/** The largest read buffer of readBounded: a file that grew past its stat is read on in pieces of at most this. */
const READ_CHUNK_MAX = 1024 * 1024;

/**
 * A regular file's text, read `maxBytes` + 1 at most: throws (naming the bound) when it is longer, whatever its stat said. The
 * first buffer is sized by `sizeHint` (the caller's stat of it; +1 to see the end in the same read), not the largest:
 * a folder of small files must not allocate a megabyte each.
 */
export async function readBounded(path: string, maxBytes: number, sizeHint = 64 * 1024): Promise<string> {
  // Non-blocking: a FIFO named like a workload file would otherwise hold the open (and a thread of the pool) until some
  // process writes to it. Only a regular file is read.
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) throw new Error(`${path} is not a regular file: not read`);
    const chunks: Buffer[] = [];
    let total = 0;
    let want = sizeHint + 1;
    for (;;) {
      const buf = Buffer.allocUnsafe(Math.max(1, Math.min(want, READ_CHUNK_MAX, maxBytes + 1 - total)));
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      chunks.push(buf.subarray(0, bytesRead));
      total += bytesRead;
      if (total > maxBytes) throw new Error(`${path} is over ${maxBytes} bytes (the files source's bound per file): not read`);
      // A short read is a regular file's end: the read that confirms it needs no large buffer.
      want = bytesRead < buf.length ? 4096 : READ_CHUNK_MAX;
    }
    return Buffer.concat(chunks, total).toString('utf8');
  } finally {
    await fh.close();
  }
}

/** The files of the read window starting at `from`: at least one, then up to READ_WINDOW files and READ_WINDOW_BYTES. Pure. */
export function readWindow<T extends { size: number }>(files: readonly T[], from: number): T[] {
  let bytes = 0;
  let end = from;
  while (end < files.length && end - from < READ_WINDOW && (end === from || bytes + (files[end]?.size ?? 0) <= READ_WINDOW_BYTES)) {
    bytes += files[end]?.size ?? 0;
    end++;
  }
  return files.slice(from, end);
}

/** One object of a file: converted, or the error it failed with (naming the object and field) and the raw object. */
export type FileEntry =
  | { key: string; object: WorkloadObject }
  | { key: string; error: string; raw: unknown; policyKind?: 'AuthorizationPolicy' | 'PeerAuthentication' };

/**
 * Parses one file's text object by object, so one malformed object does not hide the good ones of the same file. Throws
 * (with the file's name) only when a document is not valid YAML and is not recognisably an Istio policy: nothing of it
 * can be read. Objects of kinds (or versions) the agent does not read are passed to `onUnknown` as `apiVersion kind ns/name`.
 */
export function parseWorkloadFileEntries(name: string, text: string, onUnknown?: (what: string) => void): FileEntry[] {
  const out: FileEntry[] = [];
  for (const doc of documentValues(text)) {
    if ('broken' in doc) {
      out.push(...brokenPolicyDocument(name, doc.broken));
      continue;
    }
    const { value } = doc;
    if (value === null || value === undefined) continue;
    const items = isList(value) ? value.items : [value];
    for (const item of items) {
      const key = objectKey(item);
      try {
        const obj = fromK8sObject(item);
        if (obj) out.push({ key, object: obj });
        else onUnknown?.(describeObject(item));
      } catch (err) {
        const kind = policyKind(item);
        out.push({ key, error: (err as Error).message, raw: item, ...(kind ? { policyKind: kind } : {}) });
      }
    }
  }
  return out;
}

type YamlDocument = ReturnType<typeof Yaml.parseAllDocuments>[number];

let yamlModule: typeof Yaml | undefined;
/** The `yaml` parser, loaded on its first use (a file too large or refused by the fast path): ~90 ms off every start. */
const yaml = (): typeof Yaml => (yamlModule ??= createRequire(import.meta.url)('yaml') as typeof Yaml);

/**
 * Files up to this size are parsed at once by js-yaml, ~6x faster than the `yaml` parser (a file of 100 pods: ~9 ms
 * against ~50): what the start of an agent with hundreds of pods and every change of the files source wait for. Larger
 * files, and any file js-yaml refuses, go through `yaml` document by document (bounded memory; its messages carry line
 * and column, and it recovers the policies of a broken document). A file with any alias (`*name`) goes there too:
 * js-yaml bounds the number of aliases, not what they expand to, and `yaml`'s bound (maxAliasCount) counts the expansion
 * (a hundred aliases nested ten deep would otherwise make one small policy a billion principals to walk).
 */
export const FAST_PARSE_MAX_CHARS = 1024 * 1024;

/**
 * What the two parsers read differently, sent to `yaml` as before: a directive (`%YAML 1.1` makes `yes` a boolean for
 * `yaml` alone), explicit tags (`!!float 1` is a string for `yaml`), exponents past a float (`1e400`: Infinity for
 * `yaml`, a string for js-yaml) and null or empty keys (`~: x` is key "" for `yaml`, "null" for js-yaml). Also matches
 * such text inside a quoted string: such a file only takes the slower path. Tokens that merely hold such an exponent
 * (a UID like `4e123-…`, a hash) do not match.
 */
const SLOW_PATH_SYNTAX = /^%|(?:^|[\s[{,:])!|(?:^|[\s[{,:])[-+]?[\d._]*[eE][+-]?\d{3,}[ \t]*(?:$|[,\]}#])|(?:^|[\s[{,?-])(?:~|null|Null|NULL)?:(?=\s|$)/m;

/** Whether js-yaml may read `text` (see documentValues): small enough, and none of the syntax the two read differently. */
export function fastPathFor(text: string): boolean {
  return text.length <= FAST_PARSE_MAX_CHARS && !SLOW_PATH_SYNTAX.test(text);
}

/** One document of a file: its value, or a document that is not valid YAML (for brokenPolicyDocument). */
type DocumentValue = { value: unknown } | { broken: YamlDocument };

/**
 * The values of a file's documents: js-yaml's YAML 1.2 core schema for a file of at most FAST_PARSE_MAX_CHARS without
 * aliases (the schema of `yaml`'s default too: no timestamps, no merge keys, no YAML 1.1 booleans), else, or when it
 * throws on anything, the `yaml` path, which decides what is broken and how.
 */
export function* documentValues(text: string): Generator<DocumentValue> {
  if (fastPathFor(text)) {
    let values: unknown[] | undefined;
    try {
      values = loadAll(text, { schema: CORE_SCHEMA, maxAliases: 0 });
    } catch {
      values = undefined;
    }
    if (values) {
      for (const value of values) yield { value };
      return;
    }
  }
  for (const doc of documents(text)) yield doc.errors.length > 0 ? { broken: doc } : { value: doc.toJS() };
}

/**
 * The documents of a YAML stream one at a time, so that only one document's syntax tree is alive at once (a file of a
 * hundred pods would otherwise hold a hundred trees while it is read). When one has errors, the whole text is parsed
 * again with parseAllDocuments for its messages with line and column (a broken file is rare).
 */
function* documents(text: string): Generator<YamlDocument> {
  let done = 0;
  const { Composer, Parser, parseAllDocuments } = yaml();
  for (const doc of new Composer().compose(new Parser().parse(text))) {
    if (doc.errors.length > 0) {
      yield* parseAllDocuments(text).slice(done);
      return;
    }
    done++;
    yield doc as YamlDocument;
  }
}

/**
 * A document that is not valid YAML: when what the parser recovers of it names AuthorizationPolicies or
 * PeerAuthentications (kind, apiVersion, metadata.name), each is a malformed object (scope: its whole namespace, since
 * nothing else of it can be trusted); anything else throws (the file's previous objects stay in force).
 */
function brokenPolicyDocument(file: string, doc: YamlDocument): FileEntry[] {
  const yamlError = `${file}: ${doc.errors[0]?.message ?? 'invalid YAML'}`;
  let value: unknown;
  try {
    value = doc.toJS();
  } catch {
    throw new Error(yamlError);
  }
  const items = isList(value) ? value.items : [value];
  return items.map((item): FileEntry => {
    const kind = policyKind(item);
    const meta = (item as { metadata?: unknown }).metadata as { name?: unknown; namespace?: unknown } | undefined;
    if (!kind || typeof meta !== 'object' || meta === null || typeof meta.name !== 'string' || !meta.name) throw new Error(yamlError);
    const raw = { apiVersion: (item as { apiVersion: string }).apiVersion, kind, metadata: { name: meta.name, ...(typeof meta.namespace === 'string' ? { namespace: meta.namespace } : {}) } };
    const firstLine = (doc.errors[0]?.message ?? 'invalid YAML').split('\n')[0] ?? '';
    return { key: objectKey(raw), error: `${kind} ${objectKey(raw).split(' ')[1]}: not valid YAML (${firstLine})`, raw, policyKind: kind };
  });
}

/**
 * Parses one file's text into workload objects; throws with the file's name and the failing field. Objects of kinds
 * (or versions) the agent does not read are passed to `onUnknown` as `apiVersion kind ns/name`.
 */
export function parseWorkloadFile(name: string, text: string, onUnknown?: (what: string) => void): WorkloadObject[] {
  return parseWorkloadFileEntries(name, text, onUnknown).map((e) => {
    if ('error' in e) throw new Error(`${name}: ${e.error}`);
    return e.object;
  });
}

/** The Istio security kinds that fail closed when malformed (a placeholder stands in for them). */
function policyKind(item: unknown): 'AuthorizationPolicy' | 'PeerAuthentication' | undefined {
  const o = (typeof item === 'object' && item !== null ? item : {}) as { apiVersion?: unknown; kind?: unknown };
  if (typeof o.apiVersion !== 'string' || !o.apiVersion.startsWith('security.istio.io/')) return undefined;
  return o.kind === 'AuthorizationPolicy' || o.kind === 'PeerAuthentication' ? o.kind : undefined;
}

/** `kind ns/name` of a raw object: which object a later version of a file replaces. */
function objectKey(item: unknown): string {
  const o = (typeof item === 'object' && item !== null ? item : {}) as { kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } };
  const m = typeof o.metadata === 'object' && o.metadata !== null ? o.metadata : {};
  return `${String(o.kind ?? '?')} ${typeof m.namespace === 'string' && m.namespace ? m.namespace : 'default'}/${typeof m.name === 'string' && m.name ? m.name : '(unnamed)'}`;
}

/**
 * Pure: what stands in force for a file's entries, given the previous good version of each object (by key): a parsed
 * object; else its previous good version; else, for an AuthorizationPolicy or PeerAuthentication, a fail-closed
 * placeholder; else nothing. `problems` gets one line per malformed object and what was done about it.
 */
export function resolveFileEntries(
  entries: readonly FileEntry[],
  previousGood: Pick<ReadonlyMap<string, WorkloadObject>, 'get'>,
  problems?: Map<string, { error: string; outcome: 'kept-previous' | 'placeholder' | 'dropped' }>,
): ResolvedObject[] {
  const out: ResolvedObject[] = [];
  for (const e of entries) {
    if ('object' in e) {
      out.push({ key: e.key, object: e.object, placeholder: false });
      continue;
    }
    const prev = previousGood.get(e.key);
    if (prev) {
      out.push({ key: e.key, object: prev, placeholder: false });
      problems?.set(e.key, { error: e.error, outcome: 'kept-previous' });
    } else if (e.policyKind === 'AuthorizationPolicy') {
      out.push({ key: e.key, object: { kind: 'AuthorizationPolicy', authorizationPolicy: malformedAuthorizationPolicy(e.raw, e.error) }, placeholder: true });
      problems?.set(e.key, { error: e.error, outcome: 'placeholder' });
    } else if (e.policyKind === 'PeerAuthentication') {
      out.push({ key: e.key, object: { kind: 'PeerAuthentication', peerAuthentication: malformedPeerAuthentication(e.raw, e.error) }, placeholder: true });
      problems?.set(e.key, { error: e.error, outcome: 'placeholder' });
    } else {
      problems?.set(e.key, { error: e.error, outcome: 'dropped' });
    }
  }
  return out;
}

/** An object in force, and whether it is a placeholder for a malformed policy (never a "previous good version"). */
export interface ResolvedObject { key: string; object: WorkloadObject; placeholder: boolean }

function isList(v: unknown): v is { items: unknown[] } {
  return typeof v === 'object' && v !== null && (v as { kind?: unknown }).kind === 'List' && Array.isArray((v as { items?: unknown }).items);
}

/** `apiVersion kind namespace/name` of a raw object, for the log. */
export function describeObject(item: unknown): string {
  const o = (typeof item === 'object' && item !== null ? item : {}) as { apiVersion?: unknown; kind?: unknown; metadata?: { name?: unknown; namespace?: unknown } };
  const m = o.metadata ?? {};
  return `${String(o.apiVersion ?? '?')} ${String(o.kind ?? '?')} ${String(m.namespace ?? 'default')}/${String(m.name ?? '?')}`;
}

const podKey = (ns: string, name: string): string => `${ns}/${name}`;

/** What identifies a version of a file without reading it: a file whose stamp is unchanged is not read again. */
const stampOf = (s: Stats): string => `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;

/**
 * One file as last read: its stamp, the objects it puts in force, and its problems (kept until the file changes). Pods,
 * most of a big folder, are kept as their records alone (their key is derived from the record).
 */
interface FileState {
  stamp: string;
  pods: PodInfo[];
  /** Every other object in force (Namespaces, policies and their placeholders, Services, EndpointSlices). */
  objects: ResolvedObject[];
  problems: Map<string, Record<string, unknown>>;
}

/** A file's state from its resolved objects: pods apart, as bare records. */
function fileState(stamp: string, resolved: readonly ResolvedObject[], problems: FileState['problems']): FileState {
  const pods: PodInfo[] = [];
  const objects: ResolvedObject[] = [];
  for (const o of resolved) {
    if (o.object.kind === 'Pod') pods.push(o.object.pod);
    else objects.push(o);
  }
  return { stamp, pods: pods.slice(), objects, problems };
}

/** Pods and namespaces touched by one rescan (with their value before it), and whether any other kind was. */
interface Touched {
  pods: Map<string, PodInfo | undefined>;
  namespaces: Map<string, NamespaceInfo | undefined>;
  others: boolean;
}

export class FilesWorkloadSource implements WorkloadSource {
  private readonly pods_ = new FileUnion<PodInfo>((key, except) => this.definedIn(key, except, (f) => f.pods.map((p) => [podKey(p.namespace, p.name), p])));
  private readonly namespaces = new FileUnion<NamespaceInfo>((key, except) => this.definedIn(key, except, (f) => f.objects.flatMap(({ object: o }) => (o.kind === 'Namespace' ? [[o.namespace.name, o.namespace]] : []))));
  private peerAuthns: PeerAuthentication[] = [];
  private authzPolicies: AuthorizationPolicy[] = [];
  private services_: ServiceInfo[] = [];
  private slices: EndpointSliceInfo[] = [];
  /** Kinds already reported as not understood (logged once each, at debug). */
  private readonly unknownKinds = new Set<string>();
  private readonly files = new Map<string, FileState>();
  /** Problems already logged (malformed objects and files), so a rescan with nothing new logs nothing. */
  private reported = new Map<string, string>();
  private listeners: ((c: WorkloadChange) => void)[] = [];
  private readonly waiters = new PodWaiters();
  private watcher: FSWatcher | undefined;
  private poll: NodeJS.Timeout | undefined;
  /** A full rescan is asked for (it also covers `pending`). */
  private rescanQueued = false;
  /** Files the watch named since the last check: only these are stat'ed (and read if changed) by the next one. */
  private readonly pending = new Set<string>();
  private rescanning: Promise<void> | undefined;
  /** The run under way is a full rescan (the safety check has nothing to add to it). */
  private fullRescanning = false;
  /** Files read and parsed, full rescans and checks of the files the watch named, since the start: for tests and the benchmarks. */
  readonly stats = { parses: 0, rescans: 0, checks: 0 };

  /** The directory's own stamp at the start of the last full rescan: while it holds, no file was added, removed or renamed. */
  private dirStamp: string | undefined;
  /** The inode the watch is on (a directory replaced by another needs a new watch). */
  private watchedIno: number | undefined;
  /** The files the safety check stats in turn (those of the last rescan), and where it is in them. */
  private scanOrder: string[] = [];
  private scanCursor = 0;
  private closed = false;

  /**
   * `pollMs`: how often the safety check runs; `fullScanMs`: how often it stats every file. With the directory watched
   * (inotify), a change the watch did not report is still applied within `fullScanMs` at worst, and within `pollMs` when
   * it adds, removes or renames a file (a ConfigMap volume's update swaps a symlink: a rename); without a watch every
   * check is a full scan. An idle folder thus costs one stat per `pollMs` and one per file per `fullScanMs`.
   */
  constructor(
    private readonly dir: string, private readonly log: Logger, private readonly pollMs = 2000, private readonly fullScanMs = Math.max(pollMs, 30_000),
    private readonly maxFileBytes = MAX_FILE_BYTES,
  ) {}

  async start(): Promise<void> {
    await this.rescan();
    this.watchDir();
    this.poll = setInterval(() => this.safetyCheck(), this.pollMs);
    this.poll.unref();
  }

  async stop(): Promise<void> {
    this.closed = true;
    this.watcher?.close();
    this.watcher = undefined;
    if (this.poll) clearInterval(this.poll);
    while (this.rescanning) await this.rescanning;
  }

  /**
   * Watches the directory (inotify). An event naming a file the scan reads checks that file alone (its stamp, and a read
   * if it changed): applying a change to one file does not stat the others. An event on the directory itself (libuv
   * names it by the directory's own name), with no name, or on a name starting with `..` (a ConfigMap volume's update
   * swaps its `..data` symlink: every file may have changed) rescans the whole folder. Other names (an atomic writer's
   * temp file) are not read; the rename that follows names the file. (A file added or removed still moves the directory's
   * stamp, so the safety check rescans the folder once within `pollMs` after it: the net under a lost event.)
   */
  private watchDir(): void {
    this.watcher?.close();
    this.watcher = undefined;
    const self = basename(this.dir);
    try {
      const w = watch(this.dir, (_event, name) => {
        if (typeof name !== 'string' || name === self || name.startsWith('..')) this.queueRescan();
        else if (readsFile(name)) this.queueCheck(name);
      });
      w.on('error', (err) => {
        this.log.warn({ err }, 'workloads dir watch failed; polling only');
        if (this.watcher === w) this.watcher = undefined;
        w.close();
      });
      this.watcher = w;
      this.watchedIno = this.dirStamp === undefined ? undefined : Number(this.dirStamp.split(':')[0]);
    } catch (err) {
      this.log.warn({ err, dir: this.dir }, 'cannot watch workloads dir; polling only');
    }
  }

  /**
   * The periodic safety net under the watch. Without a watch: a full rescan. With one: the directory's stamp (a full
   * rescan, and a new watch if the directory was replaced, when it moved), and the stamps of the next slice of files in
   * turn, sized so that every file is checked once per `fullScanMs` (a full rescan when one moved): the cost is spread
   * evenly, never a burst of every file at once.
   */
  private safetyCheck(): void {
    if (this.fullRescanning || this.closed) return;
    if (!this.watcher) {
      this.queueRescan();
      return;
    }
    const count = Math.min(this.scanOrder.length, Math.ceil((this.scanOrder.length * this.pollMs) / this.fullScanMs));
    if (this.scanCursor >= this.scanOrder.length) this.scanCursor = 0;
    const slice = this.scanOrder.slice(this.scanCursor, this.scanCursor + count);
    this.scanCursor += slice.length;
    const files = Promise.all(slice.map((n) => stat(join(this.dir, n)).then((st) => stampOf(st) === this.files.get(n)?.stamp, () => false)));
    Promise.all([stat(this.dir), files]).then(
      ([st, same]) => {
        const moved = stampOf(st) !== this.dirStamp;
        if (moved && st.ino !== this.watchedIno && !this.closed) {
          this.log.info({ dir: this.dir }, 'workloads dir replaced; watching the new one');
          this.dirStamp = stampOf(st);
          this.watchDir();
        }
        if (moved || same.includes(false)) this.queueRescan();
      },
      () => this.queueRescan(),
    );
  }

  getPod(namespace: string, name: string): PodInfo | undefined {
    return this.pods_.get(podKey(namespace, name));
  }

  getNamespace(name: string): NamespaceInfo | undefined {
    return this.namespaces.get(name);
  }

  pods(): PodInfo[] {
    return this.pods_.values();
  }

  peerAuthentications(): PeerAuthentication[] {
    return this.peerAuthns;
  }

  authorizationPolicies(): AuthorizationPolicy[] {
    return this.authzPolicies;
  }

  services(): ServiceInfo[] {
    return this.services_;
  }

  endpointSlices(): EndpointSliceInfo[] {
    return this.slices;
  }

  onChange(listener: (change: WorkloadChange) => void): void {
    this.listeners.push(listener);
  }

  /**
   * The pod once the folder holds it. One not known yet is most often in a file the watch has just named (the runtime
   * writes the pod before its ADD): the events waiting in this turn of the loop and the checks they queue go first, and
   * only then, if it is still unknown, the whole folder is rescanned.
   */
  async waitForPod(namespace: string, name: string, timeoutMs: number): Promise<PodInfo | undefined> {
    if (!this.getPod(namespace, name) && timeoutMs > 0) void this.rescanIfMissing(namespace, name);
    return this.waiters.wait(() => this.getPod(namespace, name), timeoutMs);
  }

  private async rescanIfMissing(namespace: string, name: string): Promise<void> {
    await new Promise((resolve) => setImmediate(resolve)); // past the loop's poll phase: the watch's events are in
    // The run under way, then the one for the events pending when it ends: at most two, however busy the folder.
    for (let i = 0; i < 2 && this.rescanning; i++) await this.rescanning;
    if (!this.getPod(namespace, name) && !this.closed) this.queueRescan();
  }

  /** Re-reads the folder now (coalescing concurrent requests). */
  async rescanNow(): Promise<void> {
    while (this.rescanning) await this.rescanning;
    this.queueRescan();
    await this.rescanning;
  }

  private queueRescan(): void {
    this.rescanQueued = true;
    this.runQueued();
  }

  private queueCheck(name: string): void {
    // Past MAX_PENDING_CHECKS names (a whole folder rewritten), one full rescan is the cheaper way to see them.
    if (this.pending.size >= MAX_PENDING_CHECKS) {
      this.pending.clear();
      this.rescanQueued = true;
    } else if (!this.rescanQueued) {
      this.pending.add(name);
    }
    this.runQueued();
  }

  /** Runs what is queued, one at a time: a full rescan (which covers the pending files too), else a check of those. */
  private runQueued(): void {
    if (this.closed || this.rescanning || (!this.rescanQueued && this.pending.size === 0)) return;
    const names = [...this.pending].sort();
    this.pending.clear();
    const full = this.rescanQueued;
    this.rescanQueued = false;
    this.fullRescanning = full;
    this.rescanning = (full ? this.rescan() : this.check(names))
      .catch((err: unknown) => this.log.error({ err }, 'workloads rescan failed'))
      .finally(() => {
        this.rescanning = undefined;
        this.fullRescanning = false;
        this.runQueued();
      });
  }

  /**
   * Stats the directory and every file and reads only the files whose stamp (inode, size, mtime, ctime) changed; each changed or removed file
   * is applied on its own (its objects out, its new objects in), so an idle folder costs one stat per file.
   */
  private async rescan(): Promise<void> {
    this.stats.rescans++;
    // Before the listing: a file added after this stat moves the directory's stamp, and the next safety check sees it.
    this.dirStamp = await stat(this.dir).then(stampOf, () => undefined);
    let names: string[];
    try {
      names = (await readdir(this.dir)).filter(readsFile).sort();
      this.scanOrder = names;
    } catch (err) {
      this.log.error({ err, dir: this.dir }, 'cannot read workloads dir; keeping the last known state');
      return;
    }
    const touched: Touched = { pods: new Map(), namespaces: new Map(), others: false };
    const listed = new Set(names);
    for (const name of [...this.files.keys()]) if (!listed.has(name)) this.replaceFile(name, undefined, touched);
    await this.applyFiles(names, touched);
    this.settle(touched);
  }

  /**
   * The files the watch named. The directory's stamp is left as the last full rescan saw it, so the safety check still
   * rescans the whole folder once (within `pollMs`) after files came or went: an event the watch lost is caught there.
   */
  private async check(names: string[]): Promise<void> {
    this.stats.checks++;
    const touched: Touched = { pods: new Map(), namespaces: new Map(), others: false };
    await this.applyFiles(names, touched);
    this.settle(touched);
  }

  /**
   * Each file's stamp; read and applied where it changed, its objects out where it is gone (removed, a dangling symlink),
   * kept as it was where it cannot be stat'ed now.
   */
  private async applyFiles(names: string[], touched: Touched): Promise<void> {
    const stamps = await this.stamps(names);
    for (const [i, name] of names.entries()) if (stamps[i] === 'gone' && this.files.has(name)) this.replaceFile(name, undefined, touched);
    await this.readChanged(names.flatMap((name, i) => {
      const st = stamps[i];
      return st === undefined || st === 'gone' || this.files.get(name)?.stamp === st.stamp ? [] : [{ name, ...st }];
    }), touched);
  }

  /** Each file's stamp and size; 'gone' where it does not exist, undefined where it cannot be stat'ed now. */
  private stamps(names: string[]): Promise<({ stamp: string; size: number } | 'gone' | undefined)[]> {
    return Promise.all(names.map((n) => stat(join(this.dir, n)).then(
      (st) => ({ stamp: stampOf(st), size: st.size }),
      (err: NodeJS.ErrnoException) => (err.code === 'ENOENT' ? 'gone' as const : undefined),
    )));
  }

  /**
   * Reads a window of files at once (a start with hundreds of one-pod files otherwise waits for each read in turn),
   * then applies them in name order; a window at a time, so a cluster-sized folder is never all in memory as text.
   */
  private async readChanged(changed: { name: string; stamp: string; size: number }[], touched: Touched): Promise<void> {
    for (let w = 0; w < changed.length;) {
      const window = readWindow(changed, w);
      w += window.length;
      const texts = await Promise.all(window.map(({ name, size }) => readBounded(join(this.dir, name), this.maxFileBytes, size).then((text) => ({ text }), (err: unknown) => ({ err }))));
      for (const [k, { name, stamp }] of window.entries()) this.applyFile(name, stamp, texts[k] ?? { err: new Error('not read') }, touched);
    }
  }

  /** Logs what is newly malformed or fixed, and tells the listeners what changed. */
  private settle(touched: Touched): void {
    const problems = new Map<string, Record<string, unknown>>();
    for (const f of this.files.values()) for (const [k, p] of f.problems) problems.set(k, p);
    this.report(problems);
    this.apply(touched);
  }

  /**
   * Parses one changed file's text (or its read error) and puts its objects in force; a file that cannot be read or
   * parsed keeps its previous objects.
   */
  private applyFile(name: string, stamp: string, read: { text: string } | { err: unknown }, touched: Touched): void {
    const prev = this.files.get(name);
    let entries: FileEntry[];
    try {
      if ('err' in read) throw read.err;
      this.stats.parses++;
      entries = parseWorkloadFileEntries(name, read.text, (what) => this.unknown(name, what));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      // Nothing of it can be read: its previous objects stay in force until the file changes again.
      this.files.set(name, { stamp, pods: prev?.pods ?? [], objects: prev?.objects ?? [], problems: new Map([[`file ${name}`, { file: name, error: (err as Error).message }]]) });
      return;
    }
    const found = new Map<string, { error: string; outcome: 'kept-previous' | 'placeholder' | 'dropped' }>();
    const objects = resolveFileEntries(entries, { get: (key) => this.previousGood(key) }, found);
    const problems = new Map<string, Record<string, unknown>>();
    for (const [object, p] of found) problems.set(object, { file: name, object, ...p });
    this.replaceFile(name, fileState(stamp, objects, problems), touched);
  }

  /** Puts a file's new version (or, with undefined, its removal) in force: its old objects out, its new ones in. */
  private replaceFile(name: string, next: FileState | undefined, touched: Touched): void {
    const prev = this.files.get(name);
    if (next) this.files.set(name, next);
    else this.files.delete(name);
    const keepPods = new Set<string>();
    for (const p of next?.pods ?? []) keepPods.add(podKey(p.namespace, p.name));
    const keepNamespaces = new Set<string>();
    for (const { object: o } of next?.objects ?? []) {
      if (o.kind === 'Namespace') keepNamespaces.add(o.namespace.name);
      else touched.others = true;
    }
    for (const p of prev?.pods ?? []) {
      const key = podKey(p.namespace, p.name);
      if (keepPods.has(key)) continue;
      if (!touched.pods.has(key)) touched.pods.set(key, this.pods_.get(key));
      this.pods_.remove(key, name);
    }
    for (const { object: o } of prev?.objects ?? []) {
      if (o.kind === 'Namespace') {
        if (keepNamespaces.has(o.namespace.name)) continue;
        if (!touched.namespaces.has(o.namespace.name)) touched.namespaces.set(o.namespace.name, this.namespaces.get(o.namespace.name));
        this.namespaces.remove(o.namespace.name, name);
      } else {
        touched.others = true;
      }
    }
    for (const p of next?.pods ?? []) {
      const key = podKey(p.namespace, p.name);
      if (!touched.pods.has(key)) touched.pods.set(key, this.pods_.get(key));
      this.pods_.set(key, name, p);
    }
    for (const { object: o } of next?.objects ?? []) {
      if (o.kind !== 'Namespace') continue;
      if (!touched.namespaces.has(o.namespace.name)) touched.namespaces.set(o.namespace.name, this.namespaces.get(o.namespace.name));
      this.namespaces.set(o.namespace.name, name, o.namespace);
    }
  }

  /** The last definition (in file-name order) of a pod or namespace key in a file other than `except`. */
  private definedIn<T>(key: string, except: string, entries: (f: FileState) => [string, T][]): Held<T> | undefined {
    let found: Held<T> | undefined;
    for (const name of [...this.files.keys()].sort()) {
      if (name === except) continue;
      const f = this.files.get(name);
      if (f) for (const [k, value] of entries(f)) if (k === key) found = { value, file: name };
    }
    return found;
  }

  /** The previous good version of an object (by `kind ns/name`) in any file, for a malformed new version. */
  private previousGood(key: string): WorkloadObject | undefined {
    let found: WorkloadObject | undefined;
    const pod = key.startsWith('Pod ');
    for (const f of this.files.values()) {
      if (pod) for (const p of f.pods) if (`Pod ${podKey(p.namespace, p.name)}` === key) found = { kind: 'Pod', pod: p };
      if (!pod) for (const o of f.objects) if (!o.placeholder && o.key === key) found = o.object;
    }
    return found;
  }

  /** Logs each malformed object or file at error once per change (not on every rescan), and when it is gone. */
  private report(problems: Map<string, Record<string, unknown>>): void {
    const now = new Map<string, string>();
    for (const [key, p] of problems) {
      const sig = JSON.stringify(p);
      now.set(key, sig);
      if (this.reported.get(key) === sig) continue;
      if (key.startsWith('file ')) this.log.error(p, 'ignoring a workload file that cannot be read or parsed; its previous objects stay in force');
      else if (p.outcome === 'placeholder') this.log.error({ ...p, effect: failClosedEffect(key) }, MALFORMED_POLICY_MSG);
      else if (p.outcome === 'kept-previous') this.log.error(p, 'rejected malformed object; the previous version stays in force');
      else this.log.error(p, 'rejected malformed object; it has no previous version and is ignored');
    }
    for (const key of this.reported.keys()) {
      if (!now.has(key)) this.log.info({ object: key }, 'malformed object fixed or removed');
    }
    this.reported = now;
  }

  /** Objects the agent does not read: logged once per apiVersion and kind, at debug. */
  private unknown(file: string, what: string): void {
    const kind = what.split(' ').slice(0, 2).join(' ');
    if (this.unknownKinds.has(kind)) return;
    this.unknownKinds.add(kind);
    this.log.debug({ file, object: what }, 'ignoring an object of a kind the agent does not read (logged once per kind)');
  }

  /** Tells listeners what this rescan changed: the pods and namespaces it touched, policies and Services when they differ. */
  private apply(touched: Touched): void {
    const change: WorkloadChange = { pods: [], namespaces: [], policies: false, services: false };
    // Nobody to tell (the first load, before the directory is built on it): no per-pod change list of the whole folder.
    if (this.listeners.length === 0) touched.pods.clear();
    for (const [key, before] of touched.pods) {
      const after = this.pods_.get(key);
      if (!sameValue(before, after)) change.pods.push({ before, after });
    }
    for (const [key, before] of touched.namespaces) {
      const after = this.namespaces.get(key);
      if (!sameValue(before, after)) change.namespaces.push({ before, after });
    }
    if (touched.others) this.applyOthers(change);
    this.waiters.notify();
    if (change.pods.length === 0 && change.namespaces.length === 0 && !change.policies && !change.services) return;
    for (const l of this.listeners) {
      try {
        l(change);
      } catch (err) {
        this.log.error({ err }, 'workload change listener failed');
      }
    }
  }

  /** Policies, Services and EndpointSlices of every file, in file-name order; `change` says whether they differ. */
  private applyOthers(change: WorkloadChange): void {
    const peerAuthns: PeerAuthentication[] = [];
    const authzPolicies: AuthorizationPolicy[] = [];
    const services: ServiceInfo[] = [];
    const slices: EndpointSliceInfo[] = [];
    for (const name of [...this.files.keys()].sort()) {
      for (const { object: o } of this.files.get(name)?.objects ?? []) {
        if (o.kind === 'PeerAuthentication') peerAuthns.push(o.peerAuthentication);
        else if (o.kind === 'AuthorizationPolicy') authzPolicies.push(o.authorizationPolicy);
        else if (o.kind === 'Service') services.push(o.service);
        else if (o.kind === 'EndpointSlice') slices.push(o.endpointSlice);
      }
    }
    change.services = !sameValue([services, slices], [this.services_, this.slices]);
    change.policies = !sameValue([peerAuthns, authzPolicies], [this.peerAuthns, this.authzPolicies]);
    if (change.policies) {
      for (const p of authzPolicies) {
        for (const w of p.warnings) this.log.warn({ policy: `${p.namespace}/${p.name}`, warning: w }, 'authorization policy uses a field L4 enforcement ignores');
      }
    }
    this.peerAuthns = peerAuthns;
    this.authzPolicies = authzPolicies;
    this.services_ = services;
    this.slices = slices;
  }
}
