// Starts a child process with posix_spawn (glibc: clone(CLONE_VM|CLONE_VFORK), no copy of the agent) on a libuv worker
// thread, or inside a pod's netns on a netns spawner thread; its stdio on close-on-exec pipes read through Node
// streams, reaped by waitpid(WNOHANG) on its own pid only.
import { closeSync, constants, openSync } from 'node:fs';
import { Socket } from 'node:net';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import koffi from 'koffi';
import { SOCK_CLOEXEC, SyscallError, close, spawnCalls } from './libc.js';
import { selfNetns } from './netns.js';

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
  /** Polls for the exit now (reap): the child closed its output, so it is exiting. */
  nudgeReap: () => void;
}

/** Returns [readEnd, writeEnd], both close-on-exec so no concurrent spawn (ours or libuv's) inherits them. */
function pipe(): [number, number] {
  const fds = [0, 0];
  if ((fns.pipe2(fds, O_CLOEXEC) as number) < 0) throw new SyscallError('pipe2', koffi.errno());
  return [fds[0] as number, fds[1] as number];
}

export function checkRc(call: string, rc: number): void {
  if (rc !== 0) throw new SyscallError(call, rc); // posix_spawn* return the error number
}

/** posix_spawn file actions and attributes (glibc's opaque structures); free() once the spawn returned. */
export interface SpawnAttributes {
  fa: Buffer;
  attr: Buffer;
  free(): void;
}

/**
 * File actions and attributes for a child whose fds 0-2 are `stdio` (and no other: the agent's are close-on-exec, any
 * inherited without it are closed from 3 up), with default signal dispositions and an empty signal mask. Also used on
 * the netns spawner's thread (netns-spawn-worker.ts).
 */
export function spawnAttributes(stdio: readonly [number, number, number]): SpawnAttributes {
  const fa = Buffer.alloc(FILE_ACTIONS_SIZE);
  const attr = Buffer.alloc(ATTR_SIZE);
  checkRc('posix_spawn_file_actions_init', fns.faInit(fa) as number);
  const free = (): void => {
    fns.faDestroy(fa);
    fns.attrDestroy(attr);
  };
  try {
    checkRc('posix_spawnattr_init', fns.attrInit(attr) as number);
  } catch (err) {
    fns.faDestroy(fa);
    throw err;
  }
  try {
    stdio.forEach((fd, target) => checkRc('posix_spawn_file_actions_adddup2', fns.faDup2(fa, fd, target) as number));
    for (const fd of stdio) checkRc('posix_spawn_file_actions_addclose', fns.faClose(fa, fd) as number);
    // Also descriptors the agent inherited without close-on-exec from whatever started it (glibc 2.34+).
    checkRc('posix_spawn_file_actions_addclosefrom_np', fns.faCloseFrom(fa, 3) as number);
    checkRc('posix_spawnattr_setsigdefault', fns.attrSetSigDefault(attr, SIG_DEFAULT) as number);
    checkRc('posix_spawnattr_setsigmask', fns.attrSetSigMask(attr, SIG_EMPTY) as number);
    checkRc('posix_spawnattr_setflags', fns.attrSetFlags(attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK) as number);
  } catch (err) {
    free();
    throw err;
  }
  return { fa, attr, free };
}

/** Where a child starts: in the agent's own network namespace (default), or in the one a path names (`netns`). */
export interface SpawnOptions {
  netns?: string;
}

/**
 * Starts `path` (absolute) with `argv` (argv[0] included) and `env` (UTF-8; a NUL byte in any of them throws TypeError).
 * The child gets the three pipes as fds 0-2 and no other descriptor (spawnAttributes).
 * In the agent's namespace, posix_spawn runs on a libuv worker thread (koffi's async call): the calling thread waits
 * until the child has exec'd, which on a busy node takes milliseconds, and the event loop must not (re-adoption starts
 * hundreds of tools). The worker threads never enter a pod netns (platform/netns.ts switches only the event-loop
 * thread, synchronously, around koffi socket calls), so the child starts in the agent's own namespace.
 * With `netns`, a netns spawner thread (netns-spawn-worker.ts) enters that namespace and starts the child there: the
 * tool runs in the pod without an nsenter exec before it. A path that names no namespace fails the spawn.
 */
export async function spawnChild(path: string, argv: string[], env: NodeJS.ProcessEnv = process.env, opts: SpawnOptions = {}): Promise<SpawnedChild> {
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
      const stdio = [inR, outW, errW] as const;
      const pid = opts.netns === undefined ? await spawnHere({ path, argv, envp, stdio }) : await spawnInNetns(opts.netns, { path, argv, envp, stdio });
      closeAll([inR, outW, errW]);
      opened.length = 0;
      const stdin = new Socket({ fd: inW, readable: false, writable: true });
      const stdout = new Socket({ fd: outR, readable: true, writable: false });
      const stderr = new Socket({ fd: errR, readable: true, writable: false });
      const { exited, nudge } = reap(pid);
      return { pid, stdin, stdout, stderr, exited, nudgeReap: nudge };
    } catch (err) {
      closeAll(opened);
      throw err;
    }
  });
}

/** A child as spawnChild describes it, with its three pipe ends (what the netns spawner thread starts too). */
export interface NetnsSpawnRequest {
  path: string;
  argv: string[];
  envp: string[];
  stdio: readonly [number, number, number];
}

/** A request on its way to the spawner thread, with the namespace to start it in and the agent's own to go back to. */
export interface NetnsSpawnMessage extends NetnsSpawnRequest {
  id: number;
  netnsFd: number;
  homeFd: number;
}

/** The spawner thread's answer: the child's pid, or why it could not be started. */
export type NetnsSpawnAnswer = { id: number; pid: number } | { id: number; error: string };

interface Spawner {
  worker: Worker;
  waiting: Map<number, { resolve: (pid: number) => void; reject: (err: Error) => void }>;
  /** Takes the thread out of service: what waits on it fails with `err`; the next spawn gets a new thread. */
  retire(err: Error): void;
}

/** Bound on one netns spawn's answer (a posix_spawn returns once the child has exec'd: milliseconds on a busy node). */
const NETNS_SPAWN_TIMEOUT_MS = 15_000;

/**
 * The netns spawner threads: up to SPAWNS_AT_ONCE (each waits for its child's exec, as a libuv thread does for the
 * agent's own tools), the first started at the first spawn into a pod, another only while every one is busy; unref'd
 * while idle, so they never keep the agent alive.
 */
const spawners: Spawner[] = [];
let nextSpawnId = 1;

function netnsSpawner(): Spawner {
  const idle = spawners.find((s) => s.waiting.size === 0);
  if (idle) return idle;
  if (spawners.length >= SPAWNS_AT_ONCE) return spawners.reduce((a, b) => (b.waiting.size < a.waiting.size ? b : a));
  const worker = new Worker(...spawnerEntry());
  const fail = (err: Error): void => {
    const i = spawners.indexOf(s);
    if (i >= 0) spawners.splice(i, 1); // a new thread is started when one is needed
    for (const w of s.waiting.values()) w.reject(err);
    s.waiting.clear();
    worker.unref();
  };
  const s: Spawner = { worker, waiting: new Map(), retire: fail };
  worker.on('message', (a: NetnsSpawnAnswer) => {
    const w = s.waiting.get(a.id);
    s.waiting.delete(a.id);
    if (s.waiting.size === 0) worker.unref();
    if (w === undefined) {
      // Answered after its caller gave up (NETNS_SPAWN_TIMEOUT_MS): nobody reads that child, so it is stopped and reaped.
      if ('pid' in a) {
        try {
          process.kill(a.pid, 'SIGKILL');
        } catch {
          // already gone
        }
        void reap(a.pid).exited.catch(() => undefined);
      }
      return;
    }
    if ('pid' in a) w.resolve(a.pid);
    else w.reject(new Error(a.error));
  });
  worker.on('error', (err) => fail(err));
  worker.on('exit', (code) => fail(new Error(`a netns spawner thread exited (code ${code})`)));
  worker.unref(); // idle: it never keeps the agent alive (after the listeners: a 'message' listener refs it again)
  spawners.push(s);
  return s;
}

/**
 * The spawner thread's module beside this one: dist's .js; this file's .ts when it runs from source under tsx (the
 * tests), whose loader a worker thread does not inherit on Node 20, so the thread registers it before the import.
 */
function spawnerEntry(): [string | URL, { eval?: boolean }] {
  const ext = extname(fileURLToPath(import.meta.url));
  const entry = new URL(`./netns-spawn-worker${ext}`, import.meta.url);
  if (ext === '.js') return [entry, {}];
  return [`import('tsx/esm/api').then((tsx) => { tsx.register(); return import(${JSON.stringify(entry.href)}); });`, { eval: true }];
}

/** Starts a child in the agent's namespace: posix_spawn on a libuv worker thread (koffi async); resolves its pid. */
async function spawnHere(req: NetnsSpawnRequest): Promise<number> {
  const { fa, attr, free } = spawnAttributes(req.stdio);
  try {
    const out = [0];
    const rc = await new Promise<number>((resolve, reject) => {
      fns.posixSpawn.async(out, req.path, fa, attr, [...req.argv, null], [...req.envp, null], (err: unknown, res: unknown) => (err ? reject(err) : resolve(res as number)));
    });
    checkRc(`posix_spawn ${req.path}`, rc);
    return out[0] as number;
  } finally {
    free();
  }
}

/** Starts a child in the namespace `netns` names, on a netns spawner thread; resolves its pid. */
async function spawnInNetns(netns: string, req: NetnsSpawnRequest): Promise<number> {
  // Opened here for the spawn only (nsenter would open it too): a path that names no namespace fails setns there.
  const netnsFd = openSync(netns, constants.O_RDONLY | constants.O_NONBLOCK);
  let timedOut = false;
  let timer: NodeJS.Timeout | undefined;
  try {
    const s = netnsSpawner();
    const id = nextSpawnId++;
    return await new Promise<number>((resolve, reject) => {
      if (s.waiting.size === 0) s.worker.ref(); // a spawn under way keeps the process alive until it is answered
      s.waiting.set(id, { resolve, reject });
      // A thread that does not answer is stuck (in the namespace, maybe): it serves nothing more.
      timer = setTimeout(() => {
        timedOut = true;
        s.retire(new Error(`no answer from the netns spawner thread in ${NETNS_SPAWN_TIMEOUT_MS} ms`));
      }, NETNS_SPAWN_TIMEOUT_MS);
      s.worker.postMessage({ ...req, id, netnsFd, homeFd: selfNetns().fd } satisfies NetnsSpawnMessage);
    });
  } finally {
    clearTimeout(timer);
    // Not after a time-out: the stuck thread may still setns with this number, which must not come to name another namespace.
    if (!timedOut) closeSync(netnsFd);
  }
}

/**
 * Polls waitpid(pid, WNOHANG) with a backoff (1 ms doubling to 50 ms): only this pid is reaped, so libuv's SIGCHLD
 * handling of its own children is untouched, and the event loop never blocks. (A pidfd would need a poll on a libuv
 * worker thread per running child, taking the thread pool's four threads away from fs and DNS.) `nudge()` polls again at
 * once and restarts the backoff: a caller that saw the child close its output calls it, since the exit follows at once.
 */
function reap(pid: number): { exited: Promise<ChildExit>; nudge: () => void } {
  let timer: NodeJS.Timeout | undefined;
  let delay = 1;
  let done = false;
  let attempt = (): void => undefined;
  const exited = new Promise<ChildExit>((resolve, reject) => {
    attempt = (): void => {
      clearTimeout(timer);
      if (done) return;
      const status = [0];
      const rc = fns.waitpid(pid, status, WNOHANG) as number;
      if (rc === pid) {
        done = true;
        const s = status[0] as number;
        const signal = s & 0x7f;
        resolve(signal === 0 ? { code: (s >> 8) & 0xff, signal: undefined } : { code: undefined, signal });
        return;
      }
      if (rc < 0) {
        const errno = koffi.errno();
        if (errno !== EINTR) {
          done = true;
          reject(new SyscallError('waitpid', errno, errno === ECHILD ? `${pid} (reaped elsewhere)` : `${pid}`));
          return;
        }
      }
      timer = setTimeout(attempt, delay);
      delay = Math.min(delay * 2, 50);
    };
    attempt();
  });
  return {
    exited,
    nudge: () => {
      if (done) return;
      delay = 1;
      attempt();
    },
  };
}
