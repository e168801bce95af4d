// End to end: an agent that has given its start-up memory back (agent/src/platform/memory.ts: malloc_trim, clean file
// pages unmapped) right after ready still enrols pods, issues certificates and carries mesh traffic byte for byte.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AMBIENT, agentPod, eventually, sendRandom, startSink } from './helpers.js';

const MiB = 1024 * 1024;

netnsTest.serial('agents that gave start-up memory back at once enrol pods and carry 1 MiB across nodes intact', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: 'iptables', agentEnv: { AMBIENT_MEMORY_RELEASE_MS: '1' } });
  for (const node of [0, 1]) {
    const logs = await eventually(() => tb.agent(node).logs({ currentRun: true }), (ls) => ls.some((l) => l.msg === 'start-up memory given back'));
    const rec = logs.find((l) => l.msg === 'start-up memory given back');
    t.truthy(rec, `agent ${node} gave memory back`);
    t.true(Number(rec?.fileKb) > 0 && Number(rec?.mappings) > 0, `agent ${node} unmapped clean file pages: ${JSON.stringify(rec)}`);
    t.true(Number(rec?.rssAfterKb) < Number(rec?.rssBeforeKb), `agent ${node} RSS went down: ${JSON.stringify(rec)}`);
  }
  await tb.setNamespace('app', AMBIENT);
  const [client, server] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'sleep' },
    { node: 1, namespace: 'app', name: 'productpage' },
  ]);
  if (!client || !server) throw new Error('pods missing');
  const received = await startSink(server, 9000);
  const sent = await sendRandom(client, server.ip, 9000, MiB);
  t.is(await received.digest, sent);
  const inb = await eventually(() => agentPod(tb, server), (p) => (p?.stats?.inbound.bytesFromDownstream ?? 0) >= MiB);
  t.is(inb?.stats?.inbound.bytesFromDownstream, MiB, 'destination agent carried the bytes inbound (HBONE)');
});
