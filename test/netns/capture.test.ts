// End to end on the simulated cluster, for every redirection backend: enrolment, byte-exact forwarding across nodes,
// pods left alone, fail-closed when the agent dies, re-adoption, DEL (and an ADD into the namespace a DEL left), parallel
// ADDs, probes, CHECK, GC and late enrolment.
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRulesSeen } from '../../agent/src/redirect/rules-seen.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { CniPluginError, type RedirectMode } from '../testbed/index.js';
import {
  AMBIENT, NFT, NONE, agentCni, agentPod, ask, comparableRules, eventually, hasOurRules, holds, listeningPorts, meshClientPlainServer, podRules,
  probeSet, sendRandom, startEcho, startSink,
} from './helpers.js';
import { podRulesReport } from './source-helpers.js';

const MODES: RedirectMode[] = ['iptables', 'nftables', 'ebpf'];
const MiB = 1024 * 1024;

for (const mode of MODES) {
  netnsTest.serial(`[${mode}] 1 MiB from an enrolled pod reaches a pod on the other node intact, carried by both agents`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    const [client, server] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'sleep' },
      { node: 1, namespace: 'app', name: 'productpage' },
    ]);
    if (!client || !server) throw new Error('pods missing');
    t.deepEqual((await listeningPorts(client)).filter((p) => p >= 15000).sort(), [15001, 15006, 15008]);
    const received = await startSink(server, 9000);
    const sent = await sendRandom(client, server.ip, 9000, MiB);
    t.is(await received.digest, sent);
    const out = await eventually(() => agentPod(tb, client), (p) => (p?.stats?.outbound.bytesFromDownstream ?? 0) >= MiB);
    const inb = await eventually(() => agentPod(tb, server), (p) => (p?.stats?.inbound.bytesFromDownstream ?? 0) >= MiB);
    t.is(out?.stats?.outbound.bytesFromDownstream, MiB, 'source agent carried the bytes outbound');
    t.is(inb?.stats?.inbound.bytesFromDownstream, MiB, 'destination agent carried the bytes inbound');
    const counters = (await tb.agent(0).request('GET', '/v1/pods')).body as { counters: { pluginExecs: number } };
    t.true(counters.counters.pluginExecs >= 1, 'ADD took the native fast path through the agent');
  });

  netnsTest.serial(`[${mode}] pods that are not selected keep no rules and their traffic is untouched`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    await tb.setNamespace('plain', {});
    const [outsider, optedOut, server] = await tb.addPods([
      { node: 0, namespace: 'plain', name: 'outsider' },
      { node: 0, namespace: 'app', name: 'notsleep', labels: NONE },
      { node: 1, namespace: 'plain', name: 'web' },
    ]);
    if (!outsider || !optedOut || !server) throw new Error('pods missing');
    for (const p of [outsider, optedOut, server]) {
      t.false(hasOurRules(await podRules(p)), `${p.key} has no redirection rules`);
      t.false((await listeningPorts(p)).includes(15001), `${p.key} has no agent listener`);
      t.is((await agentPod(tb, p))?.state, 'skipped');
    }
    await startEcho(server, 8080);
    const r = await ask(outsider, server.ip, 8080);
    t.true(r.ok, r.output);
    t.true(r.output.includes(`from ${outsider.ip}`), `server saw the client's own address: ${r.output}`);
  });

  netnsTest.serial(`[${mode}] with the agent killed, enrolled pods are refused, and after restart they work without a new ADD`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    const { client, server } = await meshClientPlainServer(tb);
    t.true((await ask(client, server.ip, 8080)).ok);

    await tb.agent(0).kill('SIGKILL');
    const down = await ask(client, server.ip, 8080, 'while-down');
    t.false(down.ok, 'no bypass while the agent is down');
    t.true(hasOurRules(await podRules(client)), 'rules stay while the agent is down');

    const addsBefore = client.addOutcome.invocations.length;
    await tb.agent(0).start();
    const up = await eventually(() => ask(client, server.ip, 8080, 'after-restart'), (a) => a.ok, 10_000);
    t.true(up.ok, up.output);
    t.is(client.addOutcome.invocations.length, addsBefore, 'no new ADD was needed');
    const logs = await tb.agent(0).logs({ currentRun: true });
    t.true(logs.some((l) => l.msg === 'adopted pods from the state dir' && l.enrolled === 1));
  });

  netnsTest.serial(`[${mode}] DEL releases the listeners, the record and the probe target; CHECK fails on drift`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode, agentArgs: ['--repair-interval-ms', '0'] });
    await tb.setNamespace('app', AMBIENT);
    const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
    await t.notThrowsAsync(tb.checkPod(pod));
    if (mode === 'iptables') await pod.exec('iptables', ['-t', 'nat', '-F', 'AMBIENT_OUTPUT']);
    else if (mode === 'nftables') await pod.exec(NFT, ['flush', 'chain', 'inet', 'ambient-nat', 'output']);
    else await pod.exec('tc', ['filter', 'del', 'dev', pod.ifname, 'egress']);
    const err = await t.throwsAsync(tb.checkPod(pod), { instanceOf: CniPluginError });
    t.regex(err?.cniError?.msg ?? '', /not fully captured: missing rules/);

    // A fresh pod to DEL, watching its netns after the runtime is done (deletePod also removes the netns). Its in-pod
    // rules are left to die with the namespace: what DEL must release is the agent's and the node's.
    const victim = await tb.addPod({ node: 0, namespace: 'app', name: 'victim' });
    t.true(holds(await probeSet(tb, 0, mode), victim.ip), 'the probe set holds the pod while it is enrolled');
    await tb.node(0).cni.del(victim.attachment);
    t.false((await listeningPorts(victim)).some((p) => p >= 15001 && p <= 15008), 'listeners closed');
    t.is(await agentPod(tb, victim), undefined);
    t.false(holds(await probeSet(tb, 0, mode), victim.ip), 'the node\'s probe set no longer holds the pod');
  });

  netnsTest.serial(`[${mode}] a DEL whose namespace lives on leaves the pod's TCP refused, and an ADD into it ends with exactly the rules of a first ADD`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode, agentArgs: ['--repair-interval-ms', '0'] });
    await tb.setNamespace('app', AMBIENT);
    await tb.setNamespace('plain', {});
    const [pod, server] = await tb.addPods([{ node: 0, namespace: 'app', name: 'sleep' }, { node: 0, namespace: 'plain', name: 'web' }]);
    if (!pod || !server) throw new Error('pods missing');
    await startEcho(server, 8080);
    await startEcho(pod, 9090);
    t.true((await ask(pod, server.ip, 8080, 'before')).ok, 'captured and carried before the DEL');
    const first = comparableRules(await podRules(pod));

    // The agent's DEL alone: the pod keeps its interface, as when a runtime re-uses the sandbox's namespace.
    t.like(await agentCni(tb, pod, 'DEL'), { statusCode: 200, body: { result: 'removed' } });
    t.is(await agentPod(tb, pod), undefined, 'the record is gone');
    t.false((await listeningPorts(pod)).some((p) => p >= 15001 && p <= 15008), 'listeners closed');
    t.false(holds(await probeSet(tb, 0, mode), pod.ip), 'the probe target is released');
    t.true(hasOurRules(await podRules(pod)), 'the rules are left to die with the namespace');
    const out = await ask(pod, server.ip, 8080, 'after-del-out');
    t.false(out.ok, `outbound finds no listener: refused, never sent in clear: ${out.output}`);
    const inb = await ask(server, pod.ip, 9090, 'after-del-in');
    t.false(inb.ok, `inbound finds no listener: refused, never let in: ${inb.output}`);
    if (mode !== 'ebpf') t.regex(`${out.output} ${inb.output}`, /refused.*refused/is, 'both refused by the kernel (no listener behind the redirect)');

    // ADD into the same namespace: read, not written blind; exactly the first ADD's rules, no drift, traffic captured.
    t.like(await agentCni(tb, pod, 'ADD'), { statusCode: 200, body: { result: 'enrolled' } });
    t.deepEqual(comparableRules(await podRules(pod)), first, 'exactly the rules of the first ADD (no second jump, nothing stale)');
    await t.notThrowsAsync(tb.checkPod(pod), 'CHECK (verify) finds no drift');
    t.true(holds(await probeSet(tb, 0, mode), pod.ip), 'the probe target is back');
    const again = await ask(pod, server.ip, 8080, 'after-add');
    t.true(again.ok, again.output);
    const view = await eventually(() => agentPod(tb, pod), (p) => (p?.stats?.outbound.opened ?? 0) >= 1);
    t.true((view?.stats?.outbound.opened ?? 0) >= 1, 'carried by the agent, not around it');
    const logs = await tb.agent(0).logs({ currentRun: true });
    t.false(logs.some((l) => l.msg === 'enrolment failed'), 'no enrolment failed');
  });

  netnsTest.serial(`[${mode}] a kubelet-style connection from the node reaches an enrolled pod (probe SNAT)`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'productpage' });
    await startEcho(pod, 9080);
    const r = await tb.nodeExec(0, 'ncat', ['--no-shutdown', '-w', '3', pod.ip, '9080'], { input: 'probe\n', reject: false });
    t.regex(String(r.stdout), /pong:probe from 169\.254\.7\.127/);
    const stats = (await agentPod(tb, pod))?.stats;
    t.is(stats?.inbound.opened, 0, 'the probe went straight to the app, not through the agent');
  });

  netnsTest.serial(`[${mode}] 20 pods added in parallel are all enrolled`, async (t) => {
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    const pods = await tb.addPods(Array.from({ length: 20 }, (_, i) => ({ node: 0, namespace: 'app', name: `p${i}` })), { concurrency: 20 });
    t.is(pods.length, 20);
    for (const p of pods) {
      const view = await agentPod(tb, p);
      t.is(view?.state, 'enrolled', p.key);
      t.true(view?.listening, p.key);
      t.deepEqual(view?.ips, [p.ip]);
      t.true(hasOurRules(await podRules(p)), p.key);
    }
  });
}

netnsTest.serial('ADD with the agent down fails with a clear CNI error and leaves nothing behind', async (t) => {
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', AMBIENT);
  await tb.agent(0).stop();
  const err = await t.throwsAsync(tb.addPod({ node: 0, namespace: 'app', name: 'sleep' }), { instanceOf: CniPluginError });
  t.is(err?.cniError?.code, 11);
  t.regex(err?.cniError?.msg ?? '', /ambient-node agent unreachable .*refusing to start pod app\/sleep outside the mesh/);
  t.deepEqual(tb.pods, []);
});

netnsTest.serial('late enrolment: labelling a namespace enrols its running pods, removing the label releases them', async (t) => {
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', {});
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
  t.is((await agentPod(tb, pod))?.state, 'skipped');
  await tb.setNamespace('app', AMBIENT);
  const on = await eventually(() => agentPod(tb, pod), (v) => v?.state === 'enrolled' && v.listening);
  t.is(on?.state, 'enrolled');
  t.true(hasOurRules(await podRules(pod)));
  await tb.setNamespace('app', {});
  const off = await eventually(() => agentPod(tb, pod), (v) => v?.state === 'skipped');
  t.is(off?.state, 'skipped');
  t.false(hasOurRules(await podRules(pod)));
});

netnsTest.serial('drift repair puts flushed pod and node rules back and counts it', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, agentArgs: ['--repair-interval-ms', '1000'] });
  await tb.setNamespace('app', AMBIENT);
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
  await pod.exec('iptables', ['-t', 'nat', '-F', 'AMBIENT_OUTPUT']);
  await tb.nodeExec(0, 'iptables', ['-t', 'nat', '-F', 'AMBIENT_POSTRT']);
  const counters = async (): Promise<{ ruleRepairs: number }> => ((await tb.agent(0).request('GET', '/v1/pods')).body as { counters: { ruleRepairs: number } }).counters;
  const c = await eventually(counters, (v) => v.ruleRepairs >= 2, 10_000);
  t.true(c.ruleRepairs >= 2);
  await t.notThrowsAsync(tb.checkPod(pod));
  const host = await tb.nodeExec(0, 'iptables-save', ['-t', 'nat']);
  t.regex(String(host.stdout), /-A AMBIENT_POSTRT .*SNAT --to-source 169\.254\.7\.127/);
});

netnsTest.serial('[iptables] re-adoption after kill -9 puts back what drifted while the agent was down (pod rules, a probe target) and leaves intact rules untouched', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, agentArgs: ['--repair-interval-ms', '0'] }); // only re-adoption may repair
  await tb.setNamespace('app', AMBIENT);
  const [drifted, intact] = await tb.addPods([{ node: 0, namespace: 'app', name: 'drifted' }, { node: 0, namespace: 'app', name: 'intact' }]);
  if (!drifted || !intact) throw new Error('pods missing');
  // A packet through the intact pod's OUTPUT chain: a restore (which flushes and refills our chains) would zero its counter.
  await intact.exec('ping', ['-c', '1', '-W', '2', '127.0.0.1'], { reject: false });
  const loCounter = async (): Promise<number> => {
    const save = String((await intact.exec('iptables-save', ['-c', '-t', 'nat'])).stdout);
    return Number(/^\[(\d+):\d+\] -A AMBIENT_OUTPUT -o lo -j RETURN$/m.exec(save)?.[1] ?? Number.NaN);
  };
  const before = await loCounter();
  t.true(before >= 1, `the intact pod's lo rule counted the ping (${before})`);
  // Each ADD proved the rules it wrote (their namespace's nf_tables generation, in the record): re-adoption of a pod
  // whose namespace is still at it reads nothing; one where anything was committed since is read back and repaired.
  const seenOf = async (): Promise<Map<string, unknown>> => {
    const doc = JSON.parse(await readFile(join(tb.node(0).stateDir, 'pods.json'), 'utf8')) as { pods: { name: string; rulesSeen?: unknown }[] };
    return new Map(doc.pods.map((p) => [p.name, p.rulesSeen]));
  };
  const seen = await seenOf();
  for (const p of [drifted, intact]) t.true(isRulesSeen(seen.get(p.name)), `${p.key}'s record says where its rules were proved`);

  await tb.agent(0).kill('SIGKILL');
  await drifted.exec('iptables', ['-t', 'nat', '-F', 'AMBIENT_OUTPUT']);
  await drifted.exec('ip6tables', ['-t', 'nat', '-D', 'PREROUTING', '-j', 'AMBIENT_PRERT']);
  await tb.nodeExec(0, 'ipset', ['del', 'ambient-node-probes-v4', drifted.ip]);
  await tb.agent(0).start();

  const report = await podRulesReport(tb, drifted);
  t.true(report?.ok, `the drifted pod's rules were put back before ready: ${JSON.stringify(report)}`);
  t.true((await podRulesReport(tb, intact))?.ok);
  const probes = String((await tb.nodeExec(0, 'ipset', ['save', 'ambient-node-probes-v4'])).stdout);
  for (const p of [drifted, intact]) t.regex(probes, new RegExp(`^add ambient-node-probes-v4 ${p.ip.replaceAll('.', '\\.')} `, 'm'), `${p.key}'s probe target`);
  t.is(await loCounter(), before, 'the intact pod\'s rules were left as they were (not restored)');
  const after = await seenOf();
  t.deepEqual(after.get(intact.name), seen.get(intact.name), 'the intact pod: still at the generation it was proved at');
  t.notDeepEqual(after.get(drifted.name), seen.get(drifted.name), 'the drifted pod: proved again after its repair');
  t.true(isRulesSeen(after.get(drifted.name)));
  const logs = await tb.agent(0).logs({ currentRun: true });
  t.true(logs.some((l) => l.msg === 'adopted pods from the state dir' && l.enrolled === 2));
  // The ready line says where the start went, step by step, re-adoption included.
  const steps = logs.find((l) => l.msg === 'agent ready')?.startMs as Record<string, unknown> | undefined;
  for (const step of ['node start and module loading', 'installing node rules', 'loading workloads', 'adopting pods']) t.is(typeof steps?.[step], 'number', `${step}: ${JSON.stringify(steps)}`);
});

netnsTest.serial('STATUS fails while the agent is down; GC drops attachments the runtime no longer has', async (t) => {
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', AMBIENT);
  const keep = await tb.addPod({ node: 0, namespace: 'app', name: 'keep' });
  const stale = await tb.addPod({ node: 0, namespace: 'app', name: 'stale' });
  const gc = await tb.node(0).cni.gc({ validAttachments: [{ containerID: keep.containerId, ifname: keep.ifname }], delStale: false });
  t.truthy(gc);
  t.is(await agentPod(tb, stale), undefined, 'stale attachment dropped');
  t.false((await listeningPorts(stale)).some((p) => p >= 15001 && p <= 15008), 'its listeners closed');
  t.false(holds(await probeSet(tb, 0, 'iptables'), stale.ip), 'its probe target released (its rules die with its namespace)');
  t.is((await agentPod(tb, keep))?.state, 'enrolled');

  await tb.agent(0).stop();
  const err = await t.throwsAsync(tb.node(0).cni.status());
  t.regex(String((err as CniPluginError).cniError?.code), /^50$/);
});
