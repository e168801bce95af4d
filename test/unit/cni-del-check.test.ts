// ambient-cni DEL and CHECK against a fake agent. DEL always succeeds once the invocation is readable (agent down,
// slow or failing, netns gone, bad plugin keys); CHECK needs prevResult and fails closed like ADD.
import { join } from 'node:path';
import test from 'ava';
import { EVENT_PATHS, parseCniEvent } from '../../agent/src/protocol/cni-event.js';
import {
  POD,
  SUPPORTED,
  assertCniError,
  invoke,
  netConf,
  podEnv,
  prevResultFor,
  startFakeAgent,
  tempDir,
  type FakeAgent,
} from './cni-helpers.js';

// ---- DEL ----

for (const version of SUPPORTED) {
  test(`DEL ${version} tells the agent, prints nothing and exits 0`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, podEnv('DEL'), netConf(version, agent.socket, { prevResult: prevResultFor(version) }));
    t.is(r.code, 0);
    t.is(r.stdout, '');
    t.is(agent.requests.length, 1);
    t.is(agent.requests[0]?.path, EVENT_PATHS.del);
    const ev = parseCniEvent(agent.requests[0]?.body);
    t.like(ev, { command: 'DEL', cniVersion: version, containerId: POD.containerId, ifname: 'eth0' });
    t.is(ev.ips.length, 2);
  });
}

test('DEL without CNI_NETNS or prevResult sends an event the agent accepts', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('DEL', { CNI_NETNS: undefined }), netConf('1.1.0', agent.socket));
  t.is(r.code, 0);
  const ev = parseCniEvent(agent.requests[0]?.body);
  t.is(ev.netns, '');
  t.deepEqual(ev.ips, []);
});

const DEL_FAILURES: [label: string, setup: (a: FakeAgent) => void, extra: Record<string, unknown>][] = [
  ['the agent is down (no socket)', () => undefined, { agent_socket: '/nonexistent/ambient/cni.sock' }],
  ['the agent never answers', (a) => a.reply(EVENT_PATHS.del, 'hang'), { agent_timeout_ms: 200 }],
  ['the agent answers an error', (a) => a.reply(EVENT_PATHS.del, { status: 500, body: { code: 5, msg: 'iptables-restore failed' } }), {}],
  ['the agent answers garbage', (a) => a.reply(EVENT_PATHS.del, { status: 200, body: 'what' }), {}],
];
for (const [label, setup, extra] of DEL_FAILURES) {
  test(`DEL exits 0 with a warning on stderr when ${label}`, async (t) => {
    const agent = await startFakeAgent(t);
    setup(agent);
    const r = await invoke(t, podEnv('DEL'), netConf('1.0.0', agent.socket, extra));
    t.is(r.code, 0);
    t.is(r.stdout, '');
    t.true(r.logs.some((l) => l.level === 40 && String(l.msg).startsWith('agent not notified of DEL')), r.stderr);
  });
}

test('DEL with a CNI_NETNS that does not exist exits 0 and passes the path on', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('DEL', { CNI_NETNS: '/proc/999999999/ns/net' }), netConf('1.0.0', agent.socket));
  t.is(r.code, 0);
  t.is(parseCniEvent(agent.requests[0]?.body).netns, '/proc/999999999/ns/net');
});

test('DEL for an excluded pod does not contact the agent', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('DEL', { CNI_ARGS: 'K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1' }), netConf('1.0.0', agent.socket));
  t.is(r.code, 0);
  t.deepEqual(agent.requests, []);
});

test('DEL tolerates invalid plugin keys and CNI_ARGS pairs: defaults, warnings, agent still told', async (t) => {
  const agent = await startFakeAgent(t);
  const conf = netConf('1.0.0', agent.socket, { agent_timeout_ms: 0, log_level: 'loud', exclude_namespaces: 'x', prevResult: [] });
  const r = await invoke(t, podEnv('DEL', { CNI_ARGS: `garbage;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0` }), conf);
  t.is(r.code, 0, r.stdout);
  const problems = r.logs.filter((l) => l.msg === 'ignoring invalid input on DEL').map((l) => String(l.problem));
  t.is(problems.length, 5, problems.join('\n'));
  for (const field of ['agent_timeout_ms', 'log_level', 'exclude_namespaces', 'prevResult', 'CNI_ARGS']) {
    t.true(problems.some((p) => p.includes(field)), field);
  }
  t.like(parseCniEvent(agent.requests[0]?.body).k8s, { podNamespace: 'demo', podName: 'web-0' });
});

test('DEL still rejects an invocation it cannot read (undecodable stdin: code 6)', async (t) => {
  const r = await invoke(t, podEnv('DEL'), 'not json');
  assertCniError(t, r, 6);
});

// ---- CHECK ----

for (const version of SUPPORTED.slice(SUPPORTED.indexOf('0.4.0'))) {
  test(`CHECK ${version} asks the agent, prints nothing and exits 0`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, podEnv('CHECK'), netConf(version, agent.socket, { prevResult: prevResultFor(version) }));
    t.is(r.code, 0, r.stdout);
    t.is(r.stdout, '');
    t.is(agent.requests[0]?.path, EVENT_PATHS.check);
    t.like(parseCniEvent(agent.requests[0]?.body), { command: 'CHECK', cniVersion: version });
  });
}

test('CHECK without prevResult fails with code 7', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('CHECK'), netConf('1.0.0', agent.socket));
  assertCniError(t, r, 7, /CHECK requires prevResult/);
  t.deepEqual(agent.requests, []);
});

test('CHECK for an excluded pod succeeds without the agent', async (t) => {
  const conf = netConf('1.0.0', '/nonexistent/cni.sock', { prevResult: prevResultFor('1.0.0') });
  const r = await invoke(t, podEnv('CHECK', { CNI_ARGS: 'K8S_POD_NAMESPACE=ambient-system;K8S_POD_NAME=ambient-node-q' }), conf);
  t.is(r.code, 0);
  t.is(r.stdout, '');
});

test('CHECK with the agent down fails with code 11', async (t) => {
  const socket = join(await tempDir(t), 'cni.sock');
  const r = await invoke(t, podEnv('CHECK'), netConf('1.1.0', socket, { prevResult: prevResultFor('1.1.0') }));
  assertCniError(t, r, 11);
  t.is(r.out?.msg, `ambient-node agent unreachable at ${socket} (no socket file): cannot check that pod demo/web-0 is in the mesh`);
});

test('CHECK passes the agent error through', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.check, { status: 409, body: { code: 110, msg: 'redirect rules missing in pod netns', details: 'table nat chain AMB_OUTPUT' } });
  const r = await invoke(t, podEnv('CHECK'), netConf('1.0.0', agent.socket, { prevResult: prevResultFor('1.0.0') }));
  assertCniError(t, r, 110);
  t.deepEqual(r.out, { cniVersion: '1.0.0', code: 110, msg: 'redirect rules missing in pod netns', details: 'table nat chain AMB_OUTPUT' });
});
