// Gives back, once start-up is over, memory the agent touched only while starting: free malloc memory (malloc_trim;
// V8's compiler zones peak at ~9 MB while the modules compile) and the page-table entries of clean file pages (the
// node binary's dynamic symbol tables, bootstrap code and data: most of a fresh agent's RSS). The file pages stay in the
// page cache; whatever is touched again comes back with a minor fault. Safe as long as no file mapping of the agent
// is unmapped while this runs (nothing in it calls dlclose): it runs on the main thread, between two event-loop turns.
import { readFileSync } from 'node:fs';
import type { Logger } from '../log.js';
import { madviseDontNeed, mallocTrim } from './libc.js';
import { cleanFileMappings, parseSmaps } from './smaps.js';

/** How long after ready: past the start-up work that follows (first ADDs, certificates, V8's idle-time GC ~10-15 s later). */
export const RELEASE_AFTER_READY_MS = 30_000;
const RELEASE_AFTER_READY_MAX_MS = 600_000;

/** The delay env AMBIENT_MEMORY_RELEASE_MS asks for (0: never; benchmarks compare both), else the default; bounded. Pure. */
export function releaseDelayMs(value: string | undefined): number {
  if (value === undefined || value.trim() === '') return RELEASE_AFTER_READY_MS;
  const n = Number(value);
  return Number.isFinite(n) && n >= 0 ? Math.min(Math.round(n), RELEASE_AFTER_READY_MAX_MS) : RELEASE_AFTER_READY_MS;
}

export interface MemoryRelease {
  rssBeforeKb: number;
  rssAfterKb: number;
  /** Resident KiB of the clean file mappings unmapped, and how many mappings. */
  fileKb: number;
  mappings: number;
  /** malloc_trim gave some memory back. */
  trimmed: boolean;
  ms: number;
}

/** malloc_trim, then MADV_DONTNEED on every clean file mapping (smaps.ts: cleanFileMappings) of this process. */
export function releaseMemory(): MemoryRelease {
  const t0 = performance.now();
  const rssBeforeKb = Math.round(process.memoryUsage.rss() / 1024);
  const trimmed = mallocTrim();
  let fileKb = 0;
  let mappings = 0;
  for (const m of cleanFileMappings(parseSmaps(readFileSync('/proc/self/smaps', 'utf8')))) {
    madviseDontNeed(m.start, m.end - m.start);
    fileKb += m.rssKb;
    mappings++;
  }
  return { rssBeforeKb, rssAfterKb: Math.round(process.memoryUsage.rss() / 1024), fileKb, mappings, trimmed, ms: Math.round((performance.now() - t0) * 10) / 10 };
}

/** releaseMemory() once, `delayMs` from now (none when 0), logged; the timer does not keep the process alive. */
export function releaseMemoryLater(log: Logger, delayMs = releaseDelayMs(process.env.AMBIENT_MEMORY_RELEASE_MS)): void {
  if (delayMs === 0) return;
  setTimeout(() => {
    try {
      log.info({ ...releaseMemory() }, 'start-up memory given back');
    } catch (err) {
      log.warn({ err }, 'could not give start-up memory back');
    }
  }, delayMs).unref();
}
