// Shared parts of the fuzz passes (issue 11): the seed and iteration count (env AMBIENT_FUZZ_SEED / AMBIENT_FUZZ_ITERATIONS),
// a small seeded PRNG, and the after-the-pass checks on a live testbed (same agent pids, no pod record lost, ADD and mesh).
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Testbed, TestbedPod } from '../testbed/index.js';
import { agentPods, ask, eventually, startEcho } from './helpers.js';

/** The seed: $AMBIENT_FUZZ_SEED, else a fresh random one (always logged, so a failure can be replayed). */
export function fuzzSeed(): number {
  const env = process.env.AMBIENT_FUZZ_SEED;
  if (env !== undefined && env !== '') {
    const n = Number(env);
    if (!Number.isSafeInteger(n) || n < 0) throw new Error(`AMBIENT_FUZZ_SEED must be a non-negative integer, got ${JSON.stringify(env)}`);
    return n;
  }
  return Math.floor(Math.random() * 2 ** 31);
}

/** Cases per pass: $AMBIENT_FUZZ_ITERATIONS (for longer runs), else the pass's CI default. */
export function fuzzIterations(ciDefault: number): number {
  const env = process.env.AMBIENT_FUZZ_ITERATIONS;
  if (env === undefined || env === '') return ciDefault;
  const n = Number(env);
  if (!Number.isSafeInteger(n) || n < 1) throw new Error(`AMBIENT_FUZZ_ITERATIONS must be a positive integer, got ${JSON.stringify(env)}`);
  return n;
}

/** A seeded PRNG (mulberry32) with the few draws the fuzzers need. */
export class Rng {
  #s: number;

  constructor(seed: number) {
    this.#s = seed >>> 0;
  }

  /** Uniform in [0, 1). */
  next(): number {
    this.#s = (this.#s + 0x6d2b79f5) >>> 0;
    let t = this.#s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[Math.floor(this.next() * items.length)] as T;
  }

  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = Math.floor(this.next() * 256);
    return b;
  }
}

/** A deterministic sub-generator for case `i` of a run, so one case replays without the ones before it. */
export function caseRng(seed: number, i: number): Rng {
  return new Rng(Math.imul(seed >>> 0, 1_000_003) + i * 7919 + 1);
}

/** Open descriptors of the agent on a node. */
export async function agentFds(tb: Testbed, node: number): Promise<number> {
  const pid = tb.agent(node).pid;
  if (pid === undefined) throw new Error(`agent on node ${node} is not running`);
  return (await readdir(`/proc/${pid}/fd`)).length;
}

/** A summary of what a process's descriptors point at ("socket: 130, pipe: 4, ..."), for failure messages. */
async function fdKinds(pid: number): Promise<string> {
  const kinds = new Map<string, number>();
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => 'gone');
    const kind = target.replace(/:\[\d+\]$/, '').replace(/^\/.*/, 'file');
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return [...kinds].map(([k, n]) => `${k}: ${n}`).join(', ');
}

/** What must survive a fuzz pass on a node: the agent's pid, its pod records (API and state file) and its fd count. */
export interface NodeSnapshot {
  pid: number;
  fds: number;
  /** "<containerId>/<ifname> <state> <ips>" for every pod the agent lists, sorted. */
  pods: string[];
  /** The same from the state dir's pods.json. */
  stateFile: string[];
}

export async function snapshotNode(tb: Testbed, node: number): Promise<NodeSnapshot> {
  const pid = tb.agent(node).pid;
  if (pid === undefined) throw new Error(`agent on node ${node} is not running`);
  const pods = (await agentPods(tb, node)).map((p) => `${p.containerId}/${p.ifname} ${p.state} ${p.ips.join(',')}`).sort();
  const doc = JSON.parse(await readFile(join(tb.node(node).stateDir, 'pods.json'), 'utf8')) as {
    pods: { containerId: string; ifname: string; state: string; ips: string[] }[];
  };
  const stateFile = doc.pods.map((p) => `${p.containerId}/${p.ifname} ${p.state} ${p.ips.join(',')}`).sort();
  return { pid, fds: await agentFds(tb, node), pods, stateFile };
}

/**
 * The pass's verdict on one node: the same agent process is alive (no crash, no restart), every pod record from before is
 * still there, in the API and in the state file, unchanged, and its descriptors come back near where they were.
 */
export async function assertNodeSurvived(t: ExecutionContext, tb: Testbed, node: number, before: NodeSnapshot, label: string, fdWaitMs = 60_000): Promise<void> {
  const agent = tb.agent(node);
  t.true(agent.running, `${label}: agent on node ${node} is still running`);
  t.is(agent.pid, before.pid, `${label}: agent on node ${node} kept its pid (no crash, no restart)`);
  const logs = await agent.logs({ currentRun: true });
  const fatal = logs.filter((l) => l.level >= 60 || /crashed|uncaught|unhandled/i.test(l.msg));
  t.deepEqual(fatal.map((l) => l.msg), [], `${label}: no crash or fatal line in the agent log on node ${node}`);
  const after = await snapshotNode(tb, node);
  const lost = before.pods.filter((p) => !after.pods.includes(p));
  t.deepEqual(lost, [], `${label}: no pod record lost or changed on node ${node} (API)`);
  const lostFile = before.stateFile.filter((p) => !after.stateFile.includes(p));
  t.deepEqual(lostFile, [], `${label}: no pod record lost or changed on node ${node} (state file)`);
  const extra = after.pods.filter((p) => !before.pods.includes(p));
  t.deepEqual(extra, [], `${label}: no pod record added by the fuzzer on node ${node}`);
  const fds = await eventually(() => agentFds(tb, node), (n) => n <= before.fds + 8, fdWaitMs);
  t.log(`${label}: node ${node} agent pid ${before.pid}, fds ${before.fds} -> ${fds}, ${after.pods.length} pods`);
  if (fds > before.fds + 8) t.log(`${label}: node ${node} agent descriptors still open: ${await fdKinds(before.pid)}`);
  t.true(fds <= before.fds + 8, `${label}: node ${node} descriptors back near before (${before.fds} -> ${fds})`);
}

/** After a pass: a CNI ADD of a new pod on `node` completes and enrols it, and `client` still reaches `server` through the mesh. */
export async function assertStillServing(
  t: ExecutionContext,
  tb: Testbed,
  opts: { node: number; namespace: string; name: string; client: TestbedPod; server: TestbedPod; port: number; label: string },
): Promise<TestbedPod> {
  const fresh = await tb.addPod({ node: opts.node, namespace: opts.namespace, name: opts.name });
  const listed = (await agentPods(tb, opts.node)).find((p) => p.containerId === fresh.containerId);
  t.is(listed?.state, 'enrolled', `${opts.label}: a pod added after the pass is enrolled`);
  const a = await ask(opts.client, opts.server.ip, opts.port, `after-${opts.label}`);
  t.true(a.ok, `${opts.label}: ${opts.client.name} -> ${opts.server.name} through the mesh: ${a.output}`);
  await startEcho(fresh, 9099);
  const b = await ask(opts.client, fresh.ip, 9099, `fresh-${opts.label}`);
  t.true(b.ok, `${opts.label}: ${opts.client.name} -> the new pod through the mesh: ${b.output}`);
  return fresh;
}
