// Pausing a plain TCP relay (two piped net.Sockets) so its connections can be handed to another process: stop Node
// reading both sides, write out what was already read, wait until nothing is left to write; or resume it as it was.
import type net from 'node:net';
import { handleFd } from '../platform/sockets.js';

interface StreamHandle {
  reading?: boolean;
  readStop?: () => number;
}

type Internals = net.Socket & { _handle?: StreamHandle | null; _read: (n: number) => void; _readableState?: { ended?: boolean; reading?: boolean } };

const handleOf = (s: net.Socket): StreamHandle | null | undefined => (s as Internals)._handle;

/** Stops Node reading `s` now (libuv readStop) and until resumeReading: a paused stream alone would read on to its high-water mark. */
function stopReading(s: net.Socket): void {
  s.pause();
  (s as Internals)._read = () => undefined; // an own property: Readable.read() must not start reading again
  const h = handleOf(s);
  if (h?.reading) {
    h.reading = false;
    h.readStop?.();
  }
}

function resumeReading(s: net.Socket): void {
  delete (s as Partial<Internals>)._read; // back to net.Socket.prototype._read, which starts reading again
  // A read() while paused called the no-op _read and left the stream "reading" (waiting for a push that never came):
  // without this, Readable would never call _read again.
  const st = (s as Internals)._readableState;
  if (st) st.reading = false;
}

/** True when the socket can still carry bytes both ways here: not destroyed, no FIN read, not ended. */
function whole(s: net.Socket): boolean {
  return !s.destroyed && !s.writableEnded && !s.readableEnded && !(s as Internals)._readableState?.ended && handleFd(s) !== undefined;
}

/** Writes what Node read from `from` and did not pass on yet into `to` (Node's readable buffer). Returns the bytes. */
function passOnBuffered(from: net.Socket, to: net.Socket): number {
  let n = 0;
  for (let chunk = from.read() as Buffer | null; chunk !== null; chunk = from.read() as Buffer | null) {
    to.write(chunk);
    n += chunk.length;
  }
  return n;
}

/**
 * Longest sleep between two looks at a paused relay's pending writes. 'drain' wakes it sooner, but only after a write that
 * filled the buffer past its high-water mark; smaller writes complete silently, hence the timer.
 */
const FLUSH_POLL_MS = 10;

/** Resolves on the first 'drain' or 'close' of `sockets`, or after `ms`: never a busy wait on a peer that does not read. */
function writeProgress(sockets: net.Socket[], ms: number): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      for (const s of sockets) {
        s.off('drain', done);
        s.off('close', done);
      }
      resolve();
    };
    const timer = setTimeout(done, ms);
    for (const s of sockets) {
      s.once('drain', done);
      s.once('close', done);
    }
  });
}

/** A relay paused for a move: `flushed()` waits for its writes, then `fds` may be sent; else `resume()`. */
export interface PausedRelay {
  /** Resolves true once both sockets have nothing left to write (all in the kernel), false on timeout or error. */
  flushed(timeoutMs: number): Promise<boolean>;
  /** [down, up] fds, valid until the sockets are destroyed. */
  fds(): [number, number] | undefined;
  /** Pipes both ways again, as before the pause. */
  resume(): void;
}

/**
 * Pauses the relay `down` <-> `up` (both piped to each other): undefined, with the relay left untouched, when it
 * cannot move (a side closed, half-closed or without an fd). While paused neither socket is read; bytes already read
 * are written to the other side, so after flushed() every byte read from one socket is in the other's kernel buffer.
 */
export function pauseRelay(down: net.Socket, up: net.Socket): PausedRelay | undefined {
  if (!whole(down) || !whole(up)) return undefined;
  down.unpipe(up);
  up.unpipe(down);
  stopReading(down);
  stopReading(up);
  const resume = (): void => {
    resumeReading(down);
    resumeReading(up);
    if (down.destroyed || up.destroyed) return; // closed meanwhile: its close handlers have done the rest
    down.pipe(up);
    up.pipe(down);
    down.resume();
    up.resume();
  };
  // A FIN may sit behind buffered bytes: such a relay is half-closed, it stays (and passes the FIN on once resumed).
  if (!whole(down) || !whole(up)) {
    resume();
    return undefined;
  }
  passOnBuffered(down, up);
  passOnBuffered(up, down);
  return {
    async flushed(timeoutMs) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        if (!whole(down) || !whole(up)) return false;
        const pending = [down, up].filter((s) => s.writableLength > 0);
        if (pending.length === 0) return true;
        const left = deadline - Date.now();
        if (left <= 0) return false;
        await writeProgress(pending, Math.min(left, FLUSH_POLL_MS));
      }
    },
    fds() {
      const d = handleFd(down);
      const u = handleFd(up);
      return d !== undefined && u !== undefined ? [d, u] : undefined;
    },
    resume,
  };
}
