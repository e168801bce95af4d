// Where a process's resident memory sits, read from /proc/<pid>/smaps(_rollup): by mapping name, and by kind (the node
// binary, other files, brk heap, stacks, glibc malloc arenas, anonymous executable memory, other anonymous memory).
// The readers do the I/O; residentByKind is pure (test/unit/bench-smaps.test.ts), over the agent's own smaps parser.
import { readFileSync, readlinkSync } from 'node:fs';
import { parseSmaps, type Mapping } from '../../agent/src/platform/smaps.js';

export { parseSmaps };

/** Kinds of resident memory, KiB each (see residentByKind). */
export type ResidentKinds = Record<(typeof RESIDENT_KINDS)[number], number>;

export const RESIDENT_KINDS = [
  'binary', 'other files', 'brk heap', 'main stack', 'thread stacks', 'malloc arenas', 'anon exec', 'other anon',
] as const;

/** glibc's non-main malloc arenas are heaps of HEAP_MAX_SIZE (64 MiB on 64-bit), aligned to their size. */
const ARENA_BYTES = 64 * 1024 * 1024;
/** Largest inaccessible gap counted as a thread stack's guard page(s). */
const GUARD_MAX_BYTES = 64 * 1024;

/**
 * Resident KiB by kind. `binary` is the mapping of `exePath`. An anonymous writable mapping is a thread stack when a small
 * inaccessible mapping (its guard) ends where it starts, a malloc arena when it starts on a 64 MiB boundary and an
 * inaccessible mapping fills the rest of those 64 MiB; anonymous executable memory is JIT code. Pure.
 */
export function residentByKind(maps: Mapping[], exePath: string): ResidentKinds {
  const out = Object.fromEntries(RESIDENT_KINDS.map((k) => [k, 0])) as ResidentKinds;
  maps.forEach((m, i) => {
    const prev = maps[i - 1];
    const next = maps[i + 1];
    let kind: (typeof RESIDENT_KINDS)[number];
    if (m.path === exePath) kind = 'binary';
    else if (m.path === '[heap]') kind = 'brk heap';
    else if (m.path === '[stack]') kind = 'main stack';
    else if (m.path.startsWith('/')) kind = 'other files';
    else if (m.path !== '') kind = 'other files'; // [vdso], [vvar], ...
    else if (m.perms.includes('x')) kind = 'anon exec';
    else if (m.start % ARENA_BYTES === 0 && next?.path === '' && next.perms.startsWith('---') && next.start === m.end && next.end - m.start === ARENA_BYTES) kind = 'malloc arenas';
    else if (m.start % ARENA_BYTES === 0 && m.end - m.start === ARENA_BYTES && m.perms.startsWith('rw')) kind = 'malloc arenas';
    else if (prev?.path === '' && prev.perms.startsWith('---') && prev.end === m.start && prev.end - prev.start <= GUARD_MAX_BYTES) kind = 'thread stacks';
    else kind = 'other anon';
    out[kind] += m.rssKb;
  });
  return out;
}

/** Resident KiB by kind of a live process. */
export function processResidentByKind(pid: number): ResidentKinds {
  return residentByKind(parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8')), readlinkSync(`/proc/${pid}/exe`));
}

/** KiB fields of /proc/<pid>/smaps_rollup. */
export function rollup(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').matchAll(/^(\w+):\s+(\d+) kB/gm)) out[m[1] ?? ''] = Number(m[2]);
  return out;
}

/** Rss KiB of /proc/<pid>/smaps grouped by mapping: [heap], [stack], a file's basename, or anon (with its address and size). */
export function byMapping(pid: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'))) {
    const name = m.path === '' ? `anon ${m.start.toString(16)} ${(m.end - m.start) / 1024} KiB` : m.path.startsWith('[') ? m.path : (m.path.split('/').pop() ?? m.path);
    out[name] = (out[name] ?? 0) + m.rssKb;
  }
  return out;
}
