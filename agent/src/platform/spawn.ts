// Starts a child process with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), no copy of the agent) on a libuv worker
// thread, its stdio on close-on-exec pipes read through Node streams, reaped by waitpid(WNOHANG) on its own pid only.
import { Socket } from 'node:net';
import koffi from 'koffi';
import { SOCK_CLOEXEC, SyscallError, close, spawnCalls } from './libc.js';

const O_CLOEXEC = SOCK_CLOEXEC; // the same flag bit for pipe2
const WNOHANG = 1;
const ECHILD = 10;
const EINTR = 4;
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
/** Opaque glibc structures, allocated larger than their x86_64/aarch64 sizes (80, 336 and 128 bytes). */
const FILE_ACTIONS_SIZE = 256;
const ATTR_SIZE = 512;
const SIGSET_SIZE = 128;
const fns = spawnCalls;
/**
 * posix_spawn calls on worker threads at once; the others wait their turn here (before their pipes are made). koffi refuses async calls past its own
 * bound (256 by default: a burst of DELs could reach it), and the libuv pool's four threads also serve fs and DNS.
 */
const SPAWNS_AT_ONCE = 2;
let spawning = 0;
const waiting: (() => void)[] = [];

/** Runs `start` when fewer than SPAWNS_AT_ONCE are running, in order of arrival. */
async function inTurn<T>(start: () => Promise<T>): Promise<T> {
  if (spawning >= SPAWNS_AT_ONCE) await new Promise<void>((resolve) => waiting.push(resolve));
  else spawning++;
  try {
    return await start();
  } finally {
    const next = waiting.shift();
    if (next) next(); // the turn passes on: `spawning` stays the same
    else spawning--;
  }
}

/** Every signal to its default action in the child (Node ignores SIGPIPE; an exec'd child would inherit that) and none blocked. */
const SIG_DEFAULT = Buffer.alloc(SIGSET_SIZE);
const SIG_EMPTY = Buffer.alloc(SIGSET_SIZE);
fns.sigfillset(SIG_DEFAULT);
fns.sigemptyset(SIG_EMPTY);

/** How a spawned child ended: its exit code, or the signal that killed it. */
export interface ChildExit {
  code: number | undefined;
  signal: number | undefined;
}

export interface SpawnedChild {
  pid: number;
  stdin: Socket;
  stdout: Socket;
  stderr: Socket;
  /** Resolves once the child is reaped. */
  exited: Promise<ChildExit>;
}

/** Returns [readEnd, writeEnd], both close-on-exec so no concurrent spawn (ours or libuv's) inherits them. */
function pipe(): [number, number] {
  const fds = [0, 0];
  if ((fns.pipe2(fds, O_CLOEXEC) as number) < 0) throw new SyscallError('pipe2', koffi.errno());
  return [fds[0] as number, fds[1] as number];
}

function checkRc(call: string, rc: number): void {
  if (rc !== 0) throw new SyscallError(call, rc); // posix_spawn* return the error number
}

/**
 * Starts `path` (absolute) with `argv` (argv[0] included) and `env` (UTF-8; a NUL byte in any of them throws TypeError).
 * The child gets the three pipes as fds 0-2 and no other descriptor (the agent's are close-on-exec; any inherited
 * without it are closed from 3 up), default signal dispositions and an empty signal mask.
 * posix_spawn runs on a libuv worker thread (koffi's async call): the calling thread waits until the child has exec'd,
 * which on a busy node takes milliseconds, and the event loop must not (re-adoption starts a thousand tools for 250
 * pods). The worker threads never enter a pod netns (platform/netns.ts switches only the event-loop thread, synchronously,
 * around koffi socket calls), so the child starts in the agent's own namespace, as runTool expects.
 */
export async function spawnChild(path: string, argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<SpawnedChild> {
  const envp = Object.entries(env).flatMap(([k, v]) => (v === undefined ? [] : [`${k}=${v}`]));
  // C strings end at the first NUL: the child would silently get a shorter argument (child_process refuses them too).
  const withNul = [path, ...argv, ...envp].find((s) => s.includes('\0'));
  if (withNul !== undefined) throw new TypeError(`a NUL byte in the argument or environment string ${JSON.stringify(withNul)}`);
  // The pipes are made in the turn too: a spawn waiting for its turn holds no descriptor.
  return inTurn(async () => {
    const opened: number[] = [];
    const closeAll = (fds: number[]): void => fds.forEach((fd) => close(fd));
    try {
      const [inR, inW] = pipe();
      opened.push(inR, inW);
      const [outR, outW] = pipe();
      opened.push(outR, outW);
      const [errR, errW] = pipe();
      opened.push(errR, errW);
      const fa = Buffer.alloc(FILE_ACTIONS_SIZE);
      const attr = Buffer.alloc(ATTR_SIZE);
      checkRc('posix_spawn_file_actions_init', fns.faInit(fa) as number);
      checkRc('posix_spawnattr_init', fns.attrInit(attr) as number);
      let pid: number;
      try {
        checkRc('posix_spawn_file_actions_adddup2', fns.faDup2(fa, inR, 0) as number);
        checkRc('posix_spawn_file_actions_adddup2', fns.faDup2(fa, outW, 1) as number);
        checkRc('posix_spawn_file_actions_adddup2', fns.faDup2(fa, errW, 2) as number);
        for (const fd of [inR, outW, errW]) checkRc('posix_spawn_file_actions_addclose', fns.faClose(fa, fd) as number);
        // Also descriptors the agent inherited without close-on-exec from whatever started it (glibc 2.34+).
        checkRc('posix_spawn_file_actions_addclosefrom_np', fns.faCloseFrom(fa, 3) as number);
        checkRc('posix_spawnattr_setsigdefault', fns.attrSetSigDefault(attr, SIG_DEFAULT) as number);
        checkRc('posix_spawnattr_setsigmask', fns.attrSetSigMask(attr, SIG_EMPTY) as number);
        checkRc('posix_spawnattr_setflags', fns.attrSetFlags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK) as number);
        const out = [0];
        const rc = await new Promise<number>((resolve, reject) => {
          fns.posixSpawn.async(out, path, fa, attr, [...argv, null], [...envp, null], (err: unknown, res: unknown) => (err ? reject(err) : resolve(res as number)));
        });
        checkRc(`posix_spawn ${path}`, rc);
        pid = out[0] as number;
      } finally {
        fns.faDestroy(fa);
        fns.attrDestroy(attr);
      }
      closeAll([inR, outW, errW]);
      opened.length = 0;
      const stdin = new Socket({ fd: inW, readable: false, writable: true });
      const stdout = new Socket({ fd: outR, readable: true, writable: false });
      const stderr = new Socket({ fd: errR, readable: true, writable: false });
      return { pid, stdin, stdout, stderr, exited: reap(pid) };
    } catch (err) {
      closeAll(opened);
      throw err;
    }
  });
}

/**
 * Polls waitpid(pid, WNOHANG) with a backoff (1 ms doubling to 50 ms): only this pid is reaped, so libuv's SIGCHLD
 * handling of its own children is untouched, and the event loop never blocks. (A pidfd would need a poll on a libuv
 * worker thread per running child, taking the thread pool's four threads away from fs and DNS.)
 */
function reap(pid: number): Promise<ChildExit> {
  return new Promise((resolve, reject) => {
    let delay = 1;
    const attempt = (): void => {
      const status = [0];
      const rc = fns.waitpid(pid, status, WNOHANG) as number;
      if (rc === pid) {
        const s = status[0] as number;
        const signal = s & 0x7f;
        resolve(signal === 0 ? { code: (s >> 8) & 0xff, signal: undefined } : { code: undefined, signal });
        return;
      }
      if (rc < 0) {
        const errno = koffi.errno();
        if (errno !== EINTR) {
          reject(new SyscallError('waitpid', errno, errno === ECHILD ? `${pid} (reaped elsewhere)` : `${pid}`));
          return;
        }
      }
      setTimeout(attempt, delay);
      delay = Math.min(delay * 2, 50);
    };
    attempt();
  });
}
