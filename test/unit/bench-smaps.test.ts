// The benchmarks' reading of /proc/<pid>/smaps (scripts/bench/smaps.ts): resident memory by kind (binary, files, brk
// heap, stacks, malloc arenas, JIT code, other anonymous memory).
import test from 'ava';
import { parseSmaps, residentByKind } from '../../scripts/bench/smaps.js';

const block = (range: string, perms: string, path: string, rss: number): string =>
  `${range} ${perms} 00000000 00:00 0 ${path}\nSize: 4 kB\nRss: ${rss} kB\nPss: ${rss} kB\nVmFlags: rd wr\n`;

const SMAPS = [
  block('55d000000000-55d000400000', 'r-xp', '/usr/bin/node', 3000),
  block('55d000400000-55d000500000', 'r--p', '/usr/bin/node', 500),
  block('55d001000000-55d001200000', 'rw-p', '[heap]', 1500),
  // a glibc arena: 64 MiB-aligned, its read-write head and inaccessible rest filling 64 MiB
  block('7f0004000000-7f0004100000', 'rw-p', '', 700),
  block('7f0004100000-7f0008000000', '---p', '', 0),
  // a thread stack above its 4 KiB guard
  block('7f0010000000-7f0010001000', '---p', '', 0),
  block('7f0010001000-7f0010800000', 'rw-p', '', 40),
  // JIT code and other anonymous memory
  block('7f0020000000-7f0020040000', 'r-xp', '', 200),
  block('7f0030000000-7f0030040000', 'rw-p', '', 256),
  block('7f0040000000-7f0040100000', 'r-xp', '/usr/lib/x86_64-linux-gnu/libc.so.6', 900),
  block('7ffd00000000-7ffd00021000', 'rw-p', '[stack]', 120),
  block('7ffd00100000-7ffd00102000', 'r-xp', '[vdso]', 8),
].join('');

test('residentByKind sorts mappings into kinds and loses no KiB', (t) => {
  const maps = parseSmaps(SMAPS);
  const kinds = residentByKind(maps, '/usr/bin/node');
  t.deepEqual(kinds, {
    'binary': 3500, 'other files': 908, 'brk heap': 1500, 'main stack': 120, 'thread stacks': 40, 'malloc arenas': 700, 'anon exec': 200, 'other anon': 256,
  });
  t.is(Object.values(kinds).reduce((a, b) => a + b, 0), maps.reduce((a, m) => a + m.rssKb, 0));
});

test('an anonymous mapping off a 64 MiB boundary is no arena, and a large inaccessible gap below one is no guard', (t) => {
  const smaps = block('7f0004100000-7f0004200000', 'rw-p', '', 10) + block('7f0004200000-7f0008000000', '---p', '', 0)
    + block('7f0010000000-7f0010100000', '---p', '', 0) + block('7f0010100000-7f0010200000', 'rw-p', '', 20);
  const kinds = residentByKind(parseSmaps(smaps), '/usr/bin/node');
  t.is(kinds['malloc arenas'], 0);
  t.is(kinds['thread stacks'], 0);
  t.is(kinds['other anon'], 30);
});
