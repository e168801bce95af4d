// Exclusive locks on files in the state dir (flock(2)): which agent may change rules and records, and who is taking over.
// The kernel drops a lock when its holder dies (kill -9 included), so no stale PID file can wedge a node.
import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import { LOCK_EX, LOCK_NB, flock } from './libc.js';

/** A held lock; release() closes the file (the kernel drops the lock). Idempotent. */
export interface HeldLock {
  readonly path: string;
  release(): void;
}

/**
 * Takes the exclusive lock on `path` (created mode 0600) without waiting; undefined when another open file holds it.
 * The holder's PID is written into the file, for error messages only (the lock, not the PID, is the truth).
 */
export function tryLock(path: string): HeldLock | undefined {
  const fd = openSync(path, 'a+', 0o600);
  let locked = false;
  try {
    locked = flock(fd, LOCK_EX | LOCK_NB);
  } finally {
    if (!locked) closeSync(fd);
  }
  if (!locked) return undefined;
  ftruncateSync(fd, 0);
  writeSync(fd, `${process.pid}\n`, 0);
  let open = true;
  return {
    path,
    release() {
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

/** The PID the last holder wrote into a lock file, for messages; undefined when there is none. */
export function lockHolder(path: string): number | undefined {
  try {
    const n = Number.parseInt(readFileSync(path, 'utf8').trim(), 10);
    return Number.isInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}
