// One resource's list/watch loop (a client-go style reflector): list (from the API server's watch cache; paginated and
// consistent only when the cache cannot serve it), then watch from the list's resourceVersion with bookmarks; relist on
// 410 Gone; reconnect with exponential backoff and jitter. Malformed objects keep their last good value
// (or, with no good value and a `placeholder` option, a fail-closed placeholder stands for them).
import type { Logger } from '../../log.js';
import { describe } from '../../errors.js';
import { KubeApiError, type KubeClient, type WatchEvent } from './client.js';
import { backoffDelay, type BackoffPolicy } from '../../backoff.js';
import { sameValue } from '../same-value.js';
import { intern } from '../intern.js';

export type { BackoffPolicy };

/** The default range of the watches' and annotations' retries: 500 ms doubling to 30 s. */
export const DEFAULT_BACKOFF: BackoffPolicy = { initialMs: 500, maxMs: 30_000 };

/**
 * A configured range as the Kubernetes retries use it: up to 20 % shorter at random, doubling at most 30 times;
 * a policy that sets its own jitter or doublings keeps them.
 */
export function kubeBackoff(range: BackoffPolicy): BackoffPolicy {
  return { maxDoublings: 30, jitter: { minFactor: 0.8, maxFactor: 1 }, ...range };
}

/** Items per page of a consistent (etcd) list. */
export const LIST_PAGE_SIZE = 500;

/** How many times a paginated list starts over when its continue token expires, before the error stands. */
const PAGED_LIST_RESTARTS = 3;

export interface ReflectorChange<T> {
  key: string;
  before: T | undefined;
  after: T | undefined;
}

export interface ReflectorOptions<T> {
  client: KubeClient;
  /** Collection path, e.g. /api/v1/pods or /apis/security.istio.io/v1/authorizationpolicies. */
  path: string;
  /** Extra list and watch parameters (fieldSelector, labelSelector). */
  query?: Record<string, string>;
  /** Converts one object; undefined means "treat as absent"; throws (naming the object and field) when it is malformed. */
  convert: (obj: Record<string, unknown>) => T | undefined;
  /**
   * Fail closed: what stands for a malformed object that has no previous good version (an AuthorizationPolicy denying
   * everything in its scope). Without it such an object is ignored. A placeholder is never a "previous good version".
   */
  placeholder?: (obj: Record<string, unknown>, error: string) => T | undefined;
  /** The log message when a placeholder is put in force (default: a generic one). */
  placeholderMessage?: string;
  /** A collection that may not exist (a CRD not installed): 404 counts as an empty list, retried with backoff. */
  optional?: boolean;
  onChange: (changes: ReflectorChange<T>[]) => void;
  log: Logger;
  backoff?: BackoffPolicy;
  /** Server-side watch timeout; the client gives up after this plus a margin without any bytes. Default 300-600 s. */
  watchTimeoutSeconds?: number;
}

/** The `namespace/name` (or `name`) key of a raw object. */
export function objectKey(obj: Record<string, unknown>): string | undefined {
  const meta = obj.metadata as { name?: unknown; namespace?: unknown } | undefined;
  if (typeof meta?.name !== 'string' || !meta.name) return undefined;
  // The namespace's shared copy: the key (kept as long as the object) then holds no copy of its own.
  return typeof meta.namespace === 'string' && meta.namespace ? `${intern(meta.namespace)}/${meta.name}` : meta.name;
}

function resourceVersionOf(obj: Record<string, unknown>): string {
  const rv = (obj.metadata as { resourceVersion?: unknown } | undefined)?.resourceVersion;
  return typeof rv === 'string' ? rv : '';
}

export class Reflector<T> {
  private readonly items = new Map<string, T>();
  /** Keys whose value is a placeholder for a malformed object (not a good version to keep). */
  private placeholders = new Set<string>();
  private rv = '';
  /** The last resourceVersion this reflector had (kept across an expiry): a relist asks for state not older than it. */
  private relistFrom = '';
  private stopped = false;
  private abort = new AbortController();
  private loop: Promise<void> | undefined;
  private failures = 0;
  private syncedResolve!: () => void;
  /** Resolves after the first successful list. */
  readonly synced = new Promise<void>((resolve) => (this.syncedResolve = resolve));
  readonly stats = { lists: 0, watches: 0, events: 0, bookmarks: 0, expired: 0, errors: 0, consistentLists: 0 };
  private wakeSleep: (() => void) | undefined;

  constructor(private readonly o: ReflectorOptions<T>) {}

  get resourceVersion(): string {
    return this.rv;
  }

  get(key: string): T | undefined {
    return this.items.get(key);
  }

  values(): T[] {
    return [...this.items.values()];
  }

  /** Starts the loop; resolves once the first list succeeded (it keeps retrying until then, or until stop()). */
  async start(): Promise<void> {
    this.loop ??= this.run();
    await Promise.race([this.synced, this.loop]);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abort.abort();
    this.wakeSleep?.();
    await this.loop;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      try {
        if (!this.rv) await this.list();
        const started = Date.now();
        const outcome = await this.watchOnce();
        // A server that ends every watch at once would otherwise be hammered: that counts as a failure.
        if (outcome === 'empty' && Date.now() - started < 1000) await this.sleep(backoffDelay(this.failures++, kubeBackoff(this.o.backoff ?? DEFAULT_BACKOFF), Math.random));
      } catch (err) {
        if (this.stopped) return;
        this.stats.errors++;
        if (err instanceof KubeApiError && err.status === 410 && this.rv) {
          this.expire('watch answered 410 Gone');
          continue;
        }
        if (err instanceof KubeApiError && err.status === 404 && this.o.optional && !this.rv) {
          this.emit([...this.items].map(([key, before]) => ({ key, before, after: undefined })));
          this.items.clear();
          this.syncedResolve();
        }
        const delay = backoffDelay(this.failures++, kubeBackoff(this.o.backoff ?? DEFAULT_BACKOFF), Math.random);
        this.o.log.warn({ path: this.o.path, error: describe(err), retryInMs: delay }, 'list/watch failed; retrying');
        await this.sleep(delay);
      }
    }
  }

  private expire(why: string): void {
    this.stats.expired++;
    this.o.log.info({ path: this.o.path, resourceVersion: this.rv, why }, 'resource version expired; relisting');
    if (this.rv) this.relistFrom = this.rv;
    this.rv = '';
  }

  /**
   * The collection from the API server's watch cache: any version at start (`resourceVersion=0`), and on a relist one
   * not older than what this reflector had (`resourceVersionMatch=NotOlderThan`), so no etcd read and no going back in
   * time. When the cache cannot serve it (410, or 504 "too large resource version"), a consistent read from etcd in
   * pages of LIST_PAGE_SIZE (limit/continue), started over if its continue token expires. Each item goes to `take` as it
   * arrives (the raw objects are never all in memory at once); `restart` says the items so far are void.
   */
  private async fetchList(take: (raw: Record<string, unknown>) => void, restart: () => void): Promise<string> {
    const cached = this.relistFrom ? { resourceVersion: this.relistFrom, resourceVersionMatch: 'NotOlderThan' } : { resourceVersion: '0' };
    try {
      const body = await this.o.client.getList(this.o.path, { ...this.o.query, ...cached }, this.abort.signal, take);
      return resourceVersionOf(body);
    } catch (err) {
      if (!(err instanceof KubeApiError && (err.status === 410 || err.status === 504))) throw err;
      this.o.log.info({ path: this.o.path, resourceVersion: this.relistFrom, error: describe(err) }, 'the watch cache cannot serve the list; reading it from etcd in pages');
    }
    for (let attempt = 0; ; attempt++) {
      restart();
      try {
        return await this.fetchPages(take);
      } catch (err) {
        if (!(err instanceof KubeApiError && err.status === 410) || attempt >= PAGED_LIST_RESTARTS) throw err;
        this.o.log.info({ path: this.o.path, error: describe(err) }, 'continue token expired; listing again from the first page');
      }
    }
  }

  private async fetchPages(take: (raw: Record<string, unknown>) => void): Promise<string> {
    this.stats.consistentLists++;
    let cont = '';
    let rv = '';
    do {
      const body = await this.o.client.getList(this.o.path, { ...this.o.query, limit: String(LIST_PAGE_SIZE), ...(cont ? { continue: cont } : {}) }, this.abort.signal, take);
      rv = resourceVersionOf(body);
      const c = (body.metadata as { continue?: unknown } | undefined)?.continue;
      cont = typeof c === 'string' ? c : '';
    } while (cont);
    return rv;
  }

  /**
   * Lists the collection and puts it in force: each item converted as it arrives (a failed list changes nothing), then
   * one change per object added, changed or gone.
   */
  private async list(): Promise<void> {
    const next = new Map<string, T>();
    let placeholders = new Set(this.placeholders);
    const rv = await this.fetchList(
      (raw) => {
        const key = objectKey(raw);
        if (!key) return;
        const value = this.convertKeepingOld(key, raw, placeholders);
        if (value !== undefined) next.set(key, value);
      },
      () => {
        next.clear();
        placeholders = new Set(this.placeholders);
      },
    );
    const changes: ReflectorChange<T>[] = [];
    for (const [key, before] of this.items) if (!next.has(key)) changes.push({ key, before, after: undefined });
    for (const [key, after] of next) {
      const before = this.items.get(key);
      if (!sameValue(before, after)) changes.push({ key, before, after });
    }
    this.items.clear();
    for (const [k, v] of next) this.items.set(k, v);
    for (const k of [...placeholders]) if (!next.has(k)) placeholders.delete(k);
    this.placeholders = placeholders;
    this.rv = rv;
    this.relistFrom = rv;
    this.stats.lists++;
    this.failures = 0;
    this.o.log.debug({ path: this.o.path, items: next.size, resourceVersion: this.rv }, 'listed');
    this.emit(changes);
    this.syncedResolve();
  }

  /** Watches until the stream ends: 'expired' (relist), 'events' (it delivered something) or 'empty'. */
  private async watchOnce(): Promise<'expired' | 'events' | 'empty'> {
    const timeout = this.o.watchTimeoutSeconds ?? 300 + Math.floor(Math.random() * 300);
    const ctl = new AbortController();
    const onStop = (): void => ctl.abort();
    this.abort.signal.addEventListener('abort', onStop, { once: true });
    let idle: NodeJS.Timeout | undefined;
    const arm = (): void => {
      clearTimeout(idle);
      idle = setTimeout(() => ctl.abort(), (timeout + 30) * 1000);
      idle.unref();
    };
    this.stats.watches++;
    let got = false;
    try {
      arm();
      const events = this.o.client.watch(this.o.path, { ...this.o.query, resourceVersion: this.rv, allowWatchBookmarks: 'true', timeoutSeconds: String(timeout) }, ctl.signal);
      for await (const ev of events) {
        arm();
        if (this.handle(ev) === 'expired') return 'expired';
        got = true;
        this.failures = 0;
      }
      return got ? 'events' : 'empty';
    } catch (err) {
      if (ctl.signal.aborted && !this.stopped) return got ? 'events' : 'empty'; // idle timeout: reconnect from the same resourceVersion
      throw err;
    } finally {
      clearTimeout(idle);
      this.abort.signal.removeEventListener('abort', onStop);
    }
  }

  private handle(ev: WatchEvent): 'ok' | 'expired' {
    const obj = ev.object;
    if (ev.type === 'ERROR') {
      const code = (obj as { code?: unknown }).code;
      if (code === 410) {
        this.expire(String((obj as { message?: unknown }).message ?? '410 Gone'));
        return 'expired';
      }
      throw new KubeApiError(`watch ${this.o.path}: ${String((obj as { message?: unknown }).message ?? 'error event')}`, typeof code === 'number' ? code : undefined);
    }
    const rv = resourceVersionOf(obj);
    if (ev.type === 'BOOKMARK') {
      this.stats.bookmarks++;
      if (rv) this.rv = rv;
      return 'ok';
    }
    this.stats.events++;
    const key = objectKey(obj);
    if (key) {
      const before = this.items.get(key);
      if (ev.type === 'DELETED') {
        this.items.delete(key);
        this.placeholders.delete(key);
        if (before !== undefined) this.emit([{ key, before, after: undefined }]);
      } else {
        const after = this.convertKeepingOld(key, obj, this.placeholders);
        if (after !== undefined) this.items.set(key, after);
        else this.items.delete(key);
        if (!sameValue(before, after)) this.emit([{ key, before, after }]);
      }
    }
    if (rv) this.rv = rv;
    return 'ok';
  }

  /**
   * The converted object, or (when malformed) the previous good value, which stays in force; with no previous good
   * value, the placeholder when the options make one (fail closed), else nothing.
   */
  private convertKeepingOld(key: string, raw: Record<string, unknown>, placeholders: Set<string>): T | undefined {
    try {
      const value = this.o.convert(raw);
      placeholders.delete(key);
      return value;
    } catch (err) {
      const prev = this.placeholders.has(key) ? undefined : this.items.get(key);
      const error = describe(err);
      if (prev === undefined && this.o.placeholder) {
        const ph = this.o.placeholder(raw, error);
        if (ph !== undefined) {
          placeholders.add(key);
          this.o.log.error({ path: this.o.path, object: key, error, placeholder: true }, this.o.placeholderMessage ?? 'rejected malformed object; with no previous good version a fail-closed placeholder stands for it');
          return ph;
        }
      }
      placeholders.delete(key);
      this.o.log.error({ path: this.o.path, object: key, error, keptPrevious: prev !== undefined }, 'rejected malformed object; the previous version stays in force');
      return prev;
    }
  }

  private emit(changes: ReflectorChange<T>[]): void {
    if (changes.length === 0) return;
    try {
      this.o.onChange(changes);
    } catch (err) {
      this.o.log.error({ path: this.o.path, error: describe(err) }, 'change listener failed');
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done(): void {
        clearTimeout(t);
        resolve();
      }
      this.wakeSleep = done;
    });
  }
}
