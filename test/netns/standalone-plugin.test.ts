// The standalone plugin executable (what the front falls back to on a node without Node) as the only ambient-cni on
// the simulated cluster: a real ADD enrols the pod through the agent's socket, and DEL releases it.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AMBIENT, agentPod, listeningPorts } from './helpers.js';

netnsTest.serial('the standalone executable as the plugin: ADD enrols the pod, DEL releases it', async (t) => {
  const tb = await withTestbed(t, { nodes: 1, cniPlugin: 'standalone' });
  await tb.setNamespace('app', AMBIENT);
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'web' });
  const amb = pod.addOutcome.invocations.find((i) => i.command === 'ADD' && i.plugin === 'ambient-cni');
  t.truthy(amb, 'the chain ran ambient-cni');
  t.is((await agentPod(tb, pod))?.state, 'enrolled');
  t.deepEqual((await listeningPorts(pod)).filter((p) => p >= 15000).sort(), [15001, 15006, 15008]);
  const counters = (await tb.agent(0).request('GET', '/v1/pods')).body as { counters: { pluginExecs: number } };
  t.is(counters.counters.pluginExecs, 0, 'no fast path: the standalone executable talked to the agent itself');
  await tb.node(0).cni.del(pod.attachment);
  t.false((await listeningPorts(pod)).some((p) => p >= 15001 && p <= 15008), 'listeners closed');
  t.is(await agentPod(tb, pod), undefined);
});
