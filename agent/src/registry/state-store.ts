// Persistence of the agent's pod records in the state dir, written atomically (temp file + rename) after every change.
// A corrupt file is moved aside, never silently overwritten, so an operator can still read what was lost.
import { mkdirSync, readFileSync, renameSync } from 'node:fs';
import { rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import type { RulesSeen } from '../redirect/rules-seen.js';

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
  /**
   * Where the pod's netfilter rules were last proved exact (their namespace's nf_tables generation then: rules-seen.ts).
   * A restarted agent that finds the namespace still there re-adopts the pod without reading its rules; anything
   * committed in the namespace since (or a record that says nothing) means a full read-back and repair.
   */
  rulesSeen?: RulesSeen;
}

interface StateFile {
  version: 1;
  pods: PodRecord[];
}

export const recordKey = (containerId: string, ifname: string): string => `${containerId}/${ifname}`;

export class StateStore {
  private readonly file: string;
  private writing: Promise<void> = Promise.resolve();
  /** The write waiting for the one in progress, and the records it will write (the newest asked for). */
  private queued: Promise<void> | undefined;
  private newest: PodRecord[] = [];

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

  /** Resolves once every write asked for so far has landed (or failed): before another agent reads the file. */
  flushed(): Promise<void> {
    return this.writing.catch(() => undefined);
  }

  /**
   * Writes the records; calls are serialised so the newest always lands last, and coalesced: the saves asked for
   * until the event loop's next check phase (or while an earlier write is pending) become one write of the newest
   * records, so a burst of events finishing together costs one write of every record, not one per event. The promise resolves once these records, or newer ones, have landed. The
   * rename makes a write atomic against an agent crash; there is deliberately no fsync: a node crash also destroys every
   * pod namespace the file describes.
   */
  save(records: PodRecord[]): Promise<void> {
    this.newest = records;
    if (this.queued) return this.queued;
    // After a failed write (disk full), the next one still runs: the chain never stays rejected.
    const queued = this.writing.catch(() => undefined).then(() => new Promise<void>((resolve) => setImmediate(resolve))).then(async () => {
      this.queued = undefined;
      const doc: StateFile = { version: 1, pods: this.newest };
      const tmp = `${this.file}.tmp`;
      // Off the event loop (a write and a rename take milliseconds on a busy node's disk): the saves asked for meanwhile
      // wait as the next write, which carries the newest records.
      await writeFile(tmp, JSON.stringify(doc, null, 1), { mode: 0o600 });
      await rename(tmp, this.file);
    });
    this.queued = queued;
    this.writing = queued;
    return queued;
  }
}
