// Keeps ambient-cni installed: watches the CNI conf and bin dirs and re-runs the (idempotent) install on any change, so a
// primary CNI that rewrites its config gets ambient-cni appended again; warns, throttled, when it keeps fighting us.
import { watch, type FSWatcher } from 'node:fs';
import type { Logger } from '../log.js';
import { InstallError } from './cni-config.js';
import { DigestCache, installCni, type InstallOptions } from './install.js';

export interface WatchTuning {
  /** Re-insertions within `windowMs` beyond which another component is considered to be fighting us. */
  fightThreshold: number;
  windowMs: number;
  /** At most one fight warning per this period. */
  warnEveryMs: number;
  /** Coalesces bursts of events (an editor's write + rename) into one install run. */
  debounceMs: number;
  /** Full re-check period, in case an inotify event was lost (e.g. the dir was replaced). 0 disables. */
  resyncMs: number;
}

/** Quick re-runs after an I/O error (a racing writer) before falling back to the periodic re-check. */
const MAX_QUICK_RETRIES = 5;

export const DEFAULT_TUNING: WatchTuning = { fightThreshold: 5, windowMs: 60_000, warnEveryMs: 60_000, debounceMs: 100, resyncMs: 30_000 };

export type InstallState = { ready: true; primary: string } | { ready: false; reason: string };

/**
 * Runs install once, then again after every change in the conf or bin dir. `state` is ready only while the last run
 * succeeded. Failures (no primary config yet, a malformed file) are logged and retried on the next change.
 */
export class InstallWatcher {
  state: InstallState = { ready: false, reason: 'not run yet' };
  /** Times the config had to be written again after the first install (another writer removed ambient-cni). */
  reinserts = 0;
  private ioRetries = 0;
  fightWarnings = 0;
  private readonly tuning: WatchTuning;
  private readonly watchers: FSWatcher[] = [];
  private recent: number[] = [];
  private lastWarn = -Infinity;
  private installedOnce = false;
  private timer: NodeJS.Timeout | undefined;
  private resync: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private stopped = false;
  private readonly listeners = new Set<() => void>();

  private readonly opts: InstallOptions;

  constructor(opts: InstallOptions, private readonly log: Logger, tuning: Partial<WatchTuning> = {}) {
    this.opts = { digests: new DigestCache(), ...opts };
    this.tuning = { ...DEFAULT_TUNING, ...tuning };
  }

  /** Watches first, then installs, so a write in between is not missed. Resolves after the first run. */
  async start(): Promise<void> {
    for (const dir of [this.opts.confDir, this.opts.binDir]) {
      const w = watch(dir, { persistent: true }, () => this.schedule());
      w.on('error', (err) => this.log.error({ err, dir }, 'watching the dir failed; relying on the periodic re-check'));
      this.watchers.push(w);
    }
    if (this.tuning.resyncMs > 0) {
      this.resync = setInterval(() => this.schedule(), this.tuning.resyncMs);
      this.resync.unref();
    }
    await this.runNow();
  }

  /** Stops watching; resolves once a run in progress has finished (nothing is written after that). */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const w of this.watchers) w.close();
    clearTimeout(this.timer);
    clearInterval(this.resync);
    await this.running;
  }

  /** Calls `fn` after every completed install run (tests and readiness use it). Returns an unsubscribe function. */
  onRun(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private schedule(): void {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.runNow(), this.tuning.debounceMs);
  }

  /** One install run at a time; a change during a run triggers one more run after it. */
  private runNow(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.once();
      } while (this.again && !this.stopped);
      this.running = undefined;
    })();
    return this.running;
  }

  private async once(): Promise<void> {
    try {
      const r = await installCni(this.opts, this.log);
      if (r.wroteConfig && this.installedOnce) this.noteReinsert(r.primary);
      this.installedOnce = true;
      this.ioRetries = 0;
      this.state = { ready: true, primary: r.primary };
    } catch (err) {
      const reason = err instanceof Error ? err.message : String(err);
      if (this.state.ready || this.state.reason !== reason) {
        if (err instanceof InstallError && err.code === 'AMB_ERR_CNI_NO_PRIMARY') this.log.warn({ code: err.code }, `${reason}; waiting for it`);
        else this.log.error({ err }, 'installing ambient-cni failed; retrying on the next change');
      }
      this.state = { ready: false, reason };
      // A write that raced ours: look again soon rather than waiting for the next event. A lasting I/O error (a
      // read-only or full disk) is not retried in a tight loop: after a few tries it waits for the periodic re-check.
      if (err instanceof InstallError && err.code === 'AMB_ERR_CNI_INSTALL_IO' && this.ioRetries++ < MAX_QUICK_RETRIES) this.schedule();
    }
    for (const fn of this.listeners) {
      try {
        fn();
      } catch (err) {
        this.log.error({ err }, 'install state listener failed');
      }
    }
  }

  private noteReinsert(primary: string): void {
    this.reinserts += 1;
    const now = Date.now();
    this.recent = [...this.recent.filter((t) => now - t < this.tuning.windowMs), now];
    this.log.info({ file: primary, reinserts: this.reinserts }, 'the CNI config was rewritten without ambient-cni; added it again');
    if (this.recent.length <= this.tuning.fightThreshold || now - this.lastWarn < this.tuning.warnEveryMs) return;
    this.lastWarn = now;
    this.fightWarnings += 1;
    const hint = /cilium/i.test(primary) ? ' Cilium: set cni.exclusive=false so it stops removing other plugins.' : '';
    this.log.warn(
      { file: primary, rewrites: this.recent.length, windowSeconds: this.tuning.windowMs / 1000, code: 'AMB_ERR_CNI_CONFIG_FIGHT' },
      `another component keeps rewriting ${primary} without ambient-cni (${this.recent.length} times in ${this.tuning.windowMs / 1000} s); ` +
        `pods created between its write and ours start without capture checks.${hint}`,
    );
  }
}
