// Network namespace handles and the one way into a namespace: withNetns(ns, fn).
// withNetns is synchronous on the event-loop thread: fn must only make koffi syscalls (never Node's async socket APIs, which create their socket on a later tick in the wrong namespace).
import { closeSync, constants, fstatSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { CLONE_NEWNET, setns } from './libc.js';
import { AmbientError } from '../errors.js';

/** Identity of a network namespace: the inode and device of its nsfs file. */
export interface NetnsId {
  inode: number;
  dev: number;
}

export class NetnsGoneError extends AmbientError<'AMB_ERR_NETNS_GONE'> {
  constructor(readonly path: string, options: { cause?: unknown } = {}) {
    super('AMB_ERR_NETNS_GONE', `network namespace ${path} is gone (was the pod sandbox deleted?)`, options);
  }
}

/** An open handle on a network namespace; holding it keeps the namespace alive until close(). */
export class Netns {
  private closed = false;
  private constructor(readonly path: string, readonly fd: number, readonly id: NetnsId) {}

  static open(path: string): Netns {
    let fd: number;
    try {
      // Non-blocking: a FIFO passed as CNI_NETNS must not stall the event loop on open (libuv adds O_CLOEXEC).
      fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    } catch (err) {
      throw new NetnsGoneError(path, { cause: err });
    }
    const st = fstatSync(fd);
    const id = { inode: st.ino, dev: st.dev };
    // Every namespace file lives on the one nsfs: the device of the agent's own namespace file.
    if (path !== SELF_PATH && st.dev !== selfId().dev) {
      closeSync(fd);
      throw new NetnsGoneError(path, { cause: new Error('not a namespace file (nsfs)') });
    }
    if (path !== SELF_PATH && sameNetns(id, selfId())) {
      closeSync(fd);
      throw new Error(`refusing ${path}: it is the agent's own network namespace, not a pod's`);
    }
    return new Netns(path, fd, id);
  }

  /**
   * A path naming exactly this handle's namespace while it is open (the agent's own /proc fd link), for tools run in it
   * (runTool's netns): unlike the pod's path, it cannot come to name another namespace between two tools.
   */
  get toolPath(): string {
    return `/proc/${process.pid}/fd/${this.fd}`;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    closeSync(this.fd);
  }

  toString(): string {
    return `${this.path}[${this.id.inode}]`;
  }
}

const SELF_PATH = '/proc/thread-self/ns/net';
let self: Netns | undefined;

/** The agent's own (node) network namespace, opened once at first use. */
export function selfNetns(): Netns {
  self ??= Netns.open(SELF_PATH);
  return self;
}

function selfId(): NetnsId {
  return selfNetns().id;
}

export function sameNetns(a: NetnsId, b: NetnsId): boolean {
  return a.inode === b.inode && a.dev === b.dev;
}

/**
 * The identity of the namespace at path, or undefined when the path no longer exists or is no namespace file (an
 * unmounted leftover, a FIFO, a directory: stat never opens it, so nothing here can block).
 */
export function statNetns(path: string): NetnsId | undefined {
  try {
    const st = statSync(path);
    return st.dev === selfId().dev ? { inode: st.ino, dev: st.dev } : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Writes /proc/sys/net files of `ns` (sysctls of that namespace), all in one visit: synchronous on the event-loop
 * thread, since /proc/sys/net follows the writing thread's netns. Throws as the first failing write does (EROFS:
 * /proc/sys read-only, an unprivileged container).
 */
export function writeNetSysctls(ns: Netns, paths: readonly string[], value: string): void {
  netSysctlPaths(paths);
  withNetns(ns, () => {
    for (const path of paths) writeFileSync(path, value);
  });
}

export function writeNetSysctl(ns: Netns, path: string, value: string): void {
  writeNetSysctls(ns, [path], value);
}

/** Network sysctls' values as the pod sees them (trimmed), read in one visit to its netns; refuses paths outside /proc/sys/net. */
export function readNetSysctls(ns: Netns, paths: readonly string[]): string[] {
  netSysctlPaths(paths);
  return withNetns(ns, () => paths.map((path) => readFileSync(path, 'utf8').trim()));
}

function netSysctlPaths(paths: readonly string[]): void {
  const bad = paths.find((path) => !path.startsWith('/proc/sys/net/'));
  if (bad !== undefined) throw new Error(`not a network sysctl: ${bad}`);
}

/** Runs fn inside ns and switches back before returning, even when fn throws. */
export function withNetns<T>(ns: Netns, fn: () => T): T {
  const home = selfNetns();
  setns(ns.fd, CLONE_NEWNET);
  try {
    return fn();
  } finally {
    setns(home.fd, CLONE_NEWNET);
  }
}
