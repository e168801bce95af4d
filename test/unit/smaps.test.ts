// The agent's reading of /proc/self/smaps (agent/src/platform/smaps.ts): mappings with their Rss and Anonymous KiB, and
// which mappings' pages may be dropped after start-up (clean private read-only file mappings only), and when (memory.ts).
import test from 'ava';
import { releaseDelayMs } from '../../agent/src/platform/memory.js';
import { cleanFileMappings, parseSmaps } from '../../agent/src/platform/smaps.js';

const block = (range: string, perms: string, path: string, rss: number, anon = 0): string =>
  `${range} ${perms} 00000000 00:00 0 ${path}\nSize: 4 kB\nRss: ${rss} kB\nPss: ${rss} kB\nAnonymous: ${anon} kB\nAnonHugePages: 0 kB\nVmFlags: rd\n`;

const SMAPS = [
  block('400000-b6f000', 'r--p', '/usr/bin/node', 7000),
  block('b6f000-2601000', 'r-xp', '/usr/bin/node', 21000),
  block('563a000-563e000', 'r--p', '/usr/bin/node', 16, 16), // RELRO: relocated (written), then made read-only
  block('563e000-565c000', 'rw-p', '/usr/bin/node', 120, 100),
  block('7f0000000000-7f0000100000', 'rw-p', '', 900, 900),
  block('7f0001000000-7f0001200000', 'r-xp', '/usr/lib/x86_64-linux-gnu/libcrypto.so.3', 1500),
  block('7f0002000000-7f0002001000', 'r--s', '/sys/fs/bpf/map', 4),
  block('7f0003000000-7f0003010000', 'r--p', '/usr/lib/locale/C.utf8/LC_CTYPE', 0),
  block('7f0004000000-7f0004010000', 'r-xp', '/opt/old.so (deleted)', 8),
  block('7ffd00100000-7ffd00102000', 'r-xp', '[vdso]', 8),
  block('7ffd00200000-7ffd00221000', 'rw-p', '[stack]', 120, 120),
].join('');

test('parseSmaps reads each mapping with its range, permissions, path, Rss and Anonymous', (t) => {
  const maps = parseSmaps(SMAPS);
  t.is(maps.length, 11);
  t.deepEqual(maps[0], { start: 0x400000, end: 0xb6f000, perms: 'r--p', path: '/usr/bin/node', rssKb: 7000, anonymousKb: 0 });
  t.deepEqual(maps[2], { start: 0x563a000, end: 0x563e000, perms: 'r--p', path: '/usr/bin/node', rssKb: 16, anonymousKb: 16 });
  t.is(maps[4]?.path, '');
});

test('cleanFileMappings keeps private read-only file mappings with resident pages and no anonymous page', (t) => {
  t.deepEqual(cleanFileMappings(parseSmaps(SMAPS)).map((m) => `${m.path} ${m.perms}`), [
    '/usr/bin/node r--p', '/usr/bin/node r-xp', '/usr/lib/x86_64-linux-gnu/libcrypto.so.3 r-xp', '/opt/old.so (deleted) r-xp',
  ]);
});

test('cleanFileMappings leaves out written, writable, shared and anonymous mappings and the kernel\'s', (t) => {
  const left = ['rw-p', 'rwxp', 'r--s', '---p'].map((perms, i) => block(`${(i + 1) * 0x1000}-${(i + 2) * 0x1000}`, perms, '/usr/lib/libx.so', 4)).join('')
    + block('9000-a000', 'r-xp', '/usr/lib/liby.so', 4, 4) + block('a000-b000', 'r--p', '', 4) + block('b000-c000', 'r-xp', '[vsyscall]', 4);
  t.deepEqual(cleanFileMappings(parseSmaps(left)), []);
});

test('the release delay: 30 s by default, 0 turns it off, bounded at 10 min, garbage ignored', (t) => {
  t.is(releaseDelayMs(undefined), 30_000);
  t.is(releaseDelayMs(''), 30_000);
  t.is(releaseDelayMs('0'), 0);
  t.is(releaseDelayMs('1500'), 1500);
  t.is(releaseDelayMs('9999999'), 600_000);
  t.is(releaseDelayMs('-5'), 30_000);
  t.is(releaseDelayMs('soon'), 30_000);
});
