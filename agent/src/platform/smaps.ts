// Reads /proc/<pid>/smaps text into mappings, and picks the ones whose resident pages can be dropped from the page
// tables with no loss: private, read-only, file-backed, none of their pages copied (written) into anonymous memory.
// Pure: no I/O here (memory.ts reads /proc/self/smaps and calls madvise; scripts/bench/smaps.ts reads other pids).

/** One mapping of /proc/<pid>/smaps: address range, permissions, backing path ('' when anonymous), Rss and Anonymous KiB. */
export interface Mapping {
  start: number;
  end: number;
  perms: string;
  path: string;
  rssKb: number;
  /** Pages of the mapping that are anonymous (copied on write from the file, or never file-backed). */
  anonymousKb: number;
}

const HEAD = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$/;
const FIELD = /^(Rss|Anonymous):\s+(\d+) kB/;

export function parseSmaps(text: string): Mapping[] {
  const out: Mapping[] = [];
  for (const line of text.split('\n')) {
    const head = HEAD.exec(line);
    if (head) {
      out.push({ start: parseInt(head[1] ?? '0', 16), end: parseInt(head[2] ?? '0', 16), perms: head[3] ?? '', path: head[4] ?? '', rssKb: 0, anonymousKb: 0 });
      continue;
    }
    const field = FIELD.exec(line);
    const last = out[out.length - 1];
    if (field && last) {
      if (field[1] === 'Rss') last.rssKb += Number(field[2]);
      else last.anonymousKb += Number(field[2]);
    }
  }
  return out;
}

/**
 * Mappings whose resident pages are clean copies of a file: a path on disk, private (`p`), not writable, no anonymous page.
 * MADV_DONTNEED on them only unmaps page-cache pages (the next touch maps them again, a minor fault); on any other
 * mapping it could throw away data (a written private page) or do nothing useful. Pure.
 */
export function cleanFileMappings(maps: readonly Mapping[]): Mapping[] {
  return maps.filter((m) => m.path.startsWith('/') && m.perms.length === 4 && m.perms[0] === 'r' && m.perms[1] === '-' && m.perms[3] === 'p'
    && m.anonymousKb === 0 && m.rssKb > 0);
}
