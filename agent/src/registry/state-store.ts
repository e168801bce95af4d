// Persistence of the agent's pod records in the state dir, written atomically (temp file + rename) after every change.
// A corrupt file is moved aside, never silently overwritten, so an operator can still read what was lost.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from '../log.js';

/** One attachment the runtime told us about (ADD), enrolled or not. */
export interface PodRecord {
  containerId: string;
  ifname: string;
  netnsPath: string;
  netnsInode: number;
  netnsDev: number;
  namespace: string;
  name: string;
  uid: string;
  /** Absent in records written before identities existed: treated as "default". */
  serviceAccount?: string;
  ips: string[];
  /** enrolled: rules + listeners; skipped: known but not selected for the mesh. */
  state: 'enrolled' | 'skipped';
  reason: string;
  backend: string;
  updatedAt: string;
  /** 'proc': found by scanning /proc for a pod already running (no CNI ADD); the runtime's GC does not know it. */
  origin?: 'proc';
}

interface StateFile {
  version: 1;
  pods: PodRecord[];
}

export const recordKey = (containerId: string, ifname: string): string => `${containerId}/${ifname}`;

export class StateStore {
  private readonly file: string;
  private writing: Promise<void> = Promise.resolve();

  constructor(dir: string, private readonly log: Logger) {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    this.file = join(dir, 'pods.json');
  }

  load(): PodRecord[] {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    try {
      const doc = JSON.parse(text) as StateFile;
      if (doc.version !== 1 || !Array.isArray(doc.pods)) throw new Error(`unsupported state version ${String(doc.version)}`);
      return doc.pods;
    } catch (err) {
      const aside = `${this.file}.corrupt-${Date.now()}`;
      renameSync(this.file, aside);
      this.log.error({ err, movedTo: aside }, 'state file unreadable; moved aside, starting with no pods');
      return [];
    }
  }

  /**
   * Writes the records; calls are serialised so the newest always lands last. The rename makes a write atomic against
   * an agent crash; there is deliberately no fsync: a node crash also destroys every pod namespace the file describes.
   */
  /** Resolves once every write asked for so far has landed (or failed): before another agent reads the file. */
  flushed(): Promise<void> {
    return this.writing.catch(() => undefined);
  }

  save(records: PodRecord[]): Promise<void> {
    const doc: StateFile = { version: 1, pods: records };
    const text = JSON.stringify(doc, null, 1);
    // After a failed write (disk full), the next one still runs: the chain never stays rejected.
    this.writing = this.writing.catch(() => undefined).then(() => {
      const tmp = `${this.file}.tmp`;
      writeFileSync(tmp, text, { mode: 0o600 });
      renameSync(tmp, this.file);
    });
    return this.writing;
  }
}
