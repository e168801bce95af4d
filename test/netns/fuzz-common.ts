// Shared parts of the netns fuzz passes (issue 11): the seed, size and PRNG (from test/fixtures/fuzz-input.ts) and the
// after-the-pass checks on a live testbed (same agent pids, no pod record lost, fds back, ADD and mesh still work).
import { readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { Testbed, TestbedPod } from '../testbed/index.js';
import { agentPods, ask, eventually, startEcho } from './helpers.js';

export { caseRng, fuzzIterations, fuzzSeed, Rng } from '../fixtures/fuzz-input.js';

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
  const fdsRightAfter = await agentFds(tb, node);
  const waitStarted = Date.now();
  const fds = await eventually(() => agentFds(tb, node), (n) => n <= before.fds + 8, fdWaitMs);
  t.log(`${label}: node ${node} agent pid ${before.pid}, fds ${before.fds} -> ${fdsRightAfter} right after the pass -> ${fds} `
    + `${Date.now() - waitStarted} ms later, ${after.pods.length} pods`);
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
