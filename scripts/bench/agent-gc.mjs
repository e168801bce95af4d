// Preloaded into a benchmarked agent (node --expose-gc --import=<this file>): on SIGUSR2 runs a full garbage collection,
// optionally writes a heap snapshot (env AMBIENT_BENCH_HEAP_DIR), and logs one JSON line the benchmark waits for.
import { join } from 'node:path';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import { getHeapCodeStatistics, getHeapSpaceStatistics, getHeapStatistics, writeHeapSnapshot } from 'node:v8';

/** The agent's GC pauses so far, by kind: count and milliseconds (scavenges are what the young generation's size trades). */
const gcTotals = { scavenges: 0, scavengeMs: 0, other: 0, otherMs: 0 };
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    const minor = e.detail?.kind === constants.NODE_PERFORMANCE_GC_MINOR;
    if (minor) { gcTotals.scavenges++; gcTotals.scavengeMs += e.duration; } else { gcTotals.other++; gcTotals.otherMs += e.duration; }
  }
}).observe({ entryTypes: ['gc'] });

let seq = 0;
process.on('SIGUSR2', () => {
  seq++;
  globalThis.gc?.();
  globalThis.gc?.();
  const dir = process.env.AMBIENT_BENCH_HEAP_DIR;
  const snapshot = dir ? writeHeapSnapshot(join(dir, `agent-${process.pid}-${seq}.heapsnapshot`)) : undefined;
  const m = process.memoryUsage();
  // Per V8 space: committed (size) and resident (physical) KiB, used KiB: where heapTotal - heapUsed sits.
  const spaces = Object.fromEntries(getHeapSpaceStatistics().map((s) => [s.space_name, [s.space_size >> 10, s.physical_space_size >> 10, s.space_used_size >> 10]]));
  // V8's own malloc (zones, compiler) and its code and bytecode, bytes.
  const h = getHeapStatistics();
  const c = getHeapCodeStatistics();
  const v8 = { physical: h.total_physical_size, malloced: h.malloced_memory, peakMalloced: h.peak_malloced_memory, code: c.code_and_metadata_size, bytecode: c.bytecode_and_metadata_size, scriptSource: c.external_script_source_size };
  process.stderr.write(`${JSON.stringify({ msg: 'bench gc', seq, gc: typeof globalThis.gc === 'function', snapshot, rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, external: m.external, arrayBuffers: m.arrayBuffers, spaces, v8, gcTotals })}\n`);
});
