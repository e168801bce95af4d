// ambient-cni STATUS and GC (spec 1.1.0) against a fake agent: readiness maps to code 50, GC hands the agent the
// runtime's valid attachments and is advisory when the agent is unreachable.
import { join } from 'node:path';
import test from 'ava';
import { EVENT_PATHS, parseGcEvent } from '../../agent/src/protocol/cni-event.js';
import { assertCniError, invoke, netConf, startFakeAgent, tempDir, type FakeAgent } from './cni-helpers.js';

// STATUS and GC exist from 1.1.0 on: the only supported version where they apply (older ones: cni-version.test.ts).
const V = '1.1.0';
const STATUS_ENV = { CNI_COMMAND: 'STATUS', CNI_PATH: '/opt/cni/bin' };
const GC_ENV = { CNI_COMMAND: 'GC', CNI_PATH: '/opt/cni/bin' };

// ---- STATUS ----

test('STATUS with a ready agent prints nothing and exits 0', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, STATUS_ENV, netConf(V, agent.socket));
  t.is(r.code, 0, r.stdout);
  t.is(r.stdout, '');
  t.deepEqual(agent.requests, [{ method: 'GET', path: EVENT_PATHS.status, body: undefined }]);
});

test('STATUS with an agent that is not ready fails with code 50 and its reason', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.status, {
    status: 200,
    body: { ready: false, reason: 'no workload certificate yet', node: 'node-1', backend: 'iptables', enrolled: 0 },
  });
  const r = await invoke(t, STATUS_ENV, netConf(V, agent.socket));
  assertCniError(t, r, 50);
  t.is(r.out?.msg, 'ambient-node agent on node node-1 is not ready: no workload certificate yet');
  t.is(r.out?.cniVersion, V);
});

test('STATUS with the agent down fails with code 50', async (t) => {
  const socket = join(await tempDir(t), 'cni.sock');
  const r = await invoke(t, STATUS_ENV, netConf(V, socket));
  assertCniError(t, r, 50);
  t.is(r.out?.msg, `ambient-node agent unreachable at ${socket} (no socket file)`);
});

test('STATUS with an agent that never answers fails with code 50 after agent_timeout_ms', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.status, 'hang');
  const r = await invoke(t, STATUS_ENV, netConf(V, agent.socket, { agent_timeout_ms: 200 }));
  assertCniError(t, r, 50, /\(no reply within 200 ms\)$/);
});

test('STATUS passes an agent error code through (51: limited connectivity)', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.status, { status: 503, body: { code: 51, msg: 'forwarder restarting; enrolled pods refuse connections' } });
  const r = await invoke(t, STATUS_ENV, netConf(V, agent.socket));
  assertCniError(t, r, 51, /forwarder restarting/);
});

// ---- GC ----

const ATTACHMENTS = [
  { containerID: 'c0ffee01', ifname: 'eth0' },
  { containerID: 'c0ffee01', ifname: 'net1' },
  { containerID: 'deadbeef', ifname: 'eth0' },
];

for (const key of ['cni.dev/valid-attachments', 'cni.dev/attachments']) {
  test(`GC sends the attachments from "${key}" to the agent and exits 0`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, GC_ENV, netConf(V, agent.socket, { [key]: ATTACHMENTS }));
    t.is(r.code, 0, r.stdout);
    t.is(r.stdout, '');
    t.is(agent.requests[0]?.path, EVENT_PATHS.gc);
    const ev = parseGcEvent(agent.requests[0]?.body);
    t.is(ev.cniVersion, V);
    t.is(ev.network, 'k8s-pod-network');
    t.deepEqual(ev.validAttachments, ATTACHMENTS.map((a) => ({ containerId: a.containerID, ifname: a.ifname })));
    t.true(ev.pluginLog?.some((l) => l.msg === 'sending valid attachments to agent' && l.valid === 3));
  });
}

test('GC with an empty attachment list sends an empty list', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, GC_ENV, netConf(V, agent.socket, { 'cni.dev/valid-attachments': [] }));
  t.is(r.code, 0);
  t.deepEqual(parseGcEvent(agent.requests[0]?.body).validAttachments, []);
});

test('GC without an attachment list fails with code 7 instead of collecting everything', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, GC_ENV, netConf(V, agent.socket));
  assertCniError(t, r, 7, /cni\.dev\/valid-attachments/);
  t.deepEqual(agent.requests, []);
});

const UNREACHABLE: [label: string, setup: (a: FakeAgent) => Record<string, unknown>][] = [
  ['no socket', () => ({ agent_socket: '/nonexistent/ambient/cni.sock' })],
  [
    'no answer',
    (a) => {
      a.reply(EVENT_PATHS.gc, 'hang');
      return { agent_timeout_ms: 200 };
    },
  ],
];
for (const [label, setup] of UNREACHABLE) {
  test(`GC with the agent unreachable (${label}) exits 0 with a warning on stderr`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, GC_ENV, netConf(V, agent.socket, { 'cni.dev/valid-attachments': ATTACHMENTS, ...setup(agent) }));
    t.is(r.code, 0, r.stdout);
    t.is(r.stdout, '');
    t.true(r.logs.some((l) => l.level === 40 && l.msg === 'agent unreachable, GC skipped'), r.stderr);
  });
}

test('GC passes an agent error through', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.gc, { status: 500, body: { code: 5, msg: 'could not list pod netns' } });
  const r = await invoke(t, GC_ENV, netConf(V, agent.socket, { 'cni.dev/valid-attachments': [] }));
  assertCniError(t, r, 5, /could not list pod netns/);
});
