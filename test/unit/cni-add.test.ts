// ambient-cni ADD against a fake agent: result pass-through for every supported version, static exclusions that
// never reach the agent, fail-closed behaviour when the agent is down or slow, agent errors, and pluginLog delivery.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import test, { type ExecutionContext } from 'ava';
import { EVENT_PATHS, parseCniEvent, type CniEvent } from '../../agent/src/protocol/cni-event.js';
import {
  POD,
  POD_ARGS,
  SUPPORTED,
  assertCniError,
  invoke,
  netConf,
  podEnv,
  prevResultFor,
  startFakeAgent,
  tempDir,
  type RecordedRequest,
} from './cni-helpers.js';

function onlyEvent(t: ExecutionContext, requests: RecordedRequest[]): CniEvent {
  t.is(requests.length, 1);
  t.is(requests[0]?.method, 'POST');
  t.is(requests[0]?.path, EVENT_PATHS.add);
  // The agent's own validator must accept what the plugin sends.
  return parseCniEvent(requests[0]?.body);
}

for (const version of SUPPORTED) {
  test(`ADD ${version} chained after a prevResult prints it back unchanged and sends the pod to the agent`, async (t) => {
    const agent = await startFakeAgent(t);
    const prev = prevResultFor(version);
    const r = await invoke(t, podEnv('ADD'), netConf(version, agent.socket, { prevResult: prev }));
    t.is(r.code, 0, r.stdout);
    t.is(r.stdout, `${JSON.stringify(prev)}\n`, 'byte-for-byte the prevResult');
    const ev = onlyEvent(t, agent.requests);
    t.like(ev, {
      command: 'ADD',
      cniVersion: version,
      containerId: POD.containerId,
      netns: '/var/run/netns/cni-1234',
      ifname: 'eth0',
      args: POD_ARGS,
      network: 'k8s-pod-network',
      k8s: { podName: POD.name, podNamespace: POD.namespace, podUid: POD.uid, podInfraContainerId: POD.containerId },
    });
    t.deepEqual(ev.ips, [
      { address: '10.244.1.5/24', gateway: '10.244.1.1', interface: 2 },
      { address: 'fd00:10:244:1::5/64', gateway: 'fd00:10:244:1::1', interface: 2 },
    ]);
  });

  test(`ADD ${version} without a prevResult prints an empty ${version} result and sends no IPs`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, podEnv('ADD'), netConf(version, agent.socket));
    t.is(r.code, 0, r.stdout);
    t.deepEqual(r.out, { cniVersion: version, interfaces: [], ips: [], routes: [], dns: {} });
    t.deepEqual(onlyEvent(t, agent.requests).ips, []);
  });
}

test('ADD keeps unknown prevResult fields and key order, and sets cniVersion to the config version', async (t) => {
  const agent = await startFakeAgent(t);
  const prev = { interfaces: [{ name: 'eth0' }], 'x-vendor': { a: [1, 2, { b: null }] }, ips: [{ address: '10.0.0.9/32' }], cniVersion: '0.4.0' };
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', agent.socket, { prevResult: prev }));
  t.is(r.code, 0);
  t.is(r.stdout, `${JSON.stringify({ ...prev, cniVersion: '1.0.0' })}\n`);
});

test('ADD with a verdict of "skipped" (pod not selected for the mesh) succeeds', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.add, { status: 200, body: { result: 'skipped', reason: 'namespace not labelled' } });
  const prev = prevResultFor('1.1.0');
  const r = await invoke(t, podEnv('ADD'), netConf('1.1.0', agent.socket, { prevResult: prev }));
  t.is(r.code, 0);
  t.deepEqual(r.out, prev);
});

const EXCLUDED: [label: string, args: string, extra: Record<string, unknown>][] = [
  ['a pod in kube-system (default exclude_namespaces)', 'K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1', {}],
  ['a pod in a configured excluded namespace', 'K8S_POD_NAMESPACE=infra;K8S_POD_NAME=db-0', { exclude_namespaces: ['infra', 'other'] }],
  ["the agent's own pod", 'K8S_POD_NAMESPACE=ambient-system;K8S_POD_NAME=ambient-node-x7k2p', {}],
  ["the agent's own pod in a configured agent_namespace", 'K8S_POD_NAMESPACE=mesh;K8S_POD_NAME=ambient-node-abc', { agent_namespace: 'mesh' }],
  ['a container that is not a Kubernetes pod (no CNI_ARGS)', '', {}],
  ['a pod without K8S_POD_NAMESPACE', 'K8S_POD_NAME=web-0', {}],
];
for (const [label, args, extra] of EXCLUDED) {
  test(`ADD for ${label} returns prevResult without contacting the agent, even when it is down`, async (t) => {
    const dir = await tempDir(t);
    const prev = prevResultFor('1.0.0');
    const conf = netConf('1.0.0', join(dir, 'absent.sock'), { prevResult: prev, ...extra });
    const r = await invoke(t, podEnv('ADD', { CNI_ARGS: args }), conf);
    t.is(r.code, 0, r.stdout);
    t.deepEqual(r.out, prev);
    t.true(r.logs.some((l) => l.msg === 'pod excluded, agent not consulted'));
  });
}

const NOT_EXCLUDED: [label: string, args: string][] = [
  ['a non-agent pod in the agent namespace', 'K8S_POD_NAMESPACE=ambient-system;K8S_POD_NAME=debug-shell'],
  ['a pod named ambient-node-* outside the agent namespace', 'K8S_POD_NAMESPACE=demo;K8S_POD_NAME=ambient-node-fake'],
];
for (const [label, args] of NOT_EXCLUDED) {
  test(`ADD for ${label} waits for the agent`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, podEnv('ADD', { CNI_ARGS: args }), netConf('1.0.0', agent.socket));
    t.is(r.code, 0);
    t.is(agent.requests.length, 1);
  });
}

test('an empty exclude_namespaces sends kube-system pods to the agent', async (t) => {
  const agent = await startFakeAgent(t);
  const args = 'K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-1';
  const r = await invoke(t, podEnv('ADD', { CNI_ARGS: args }), netConf('1.0.0', agent.socket, { exclude_namespaces: [] }));
  t.is(r.code, 0);
  t.is(agent.requests.length, 1);
});

test('ADD with no agent socket fails with code 11 and says the pod will not start outside the mesh', async (t) => {
  const socket = join(await tempDir(t), 'cni.sock');
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', socket, { prevResult: prevResultFor('1.0.0') }));
  assertCniError(t, r, 11);
  t.is(
    r.out?.msg,
    `ambient-node agent unreachable at ${socket} (no socket file): refusing to start pod demo/web-0 outside the mesh`,
  );
  t.regex(String(r.out?.details), /ambient-system\/ambient-node-\*/);
  t.is(r.out?.cniVersion, '1.0.0');
});

test('ADD with a socket nobody listens on fails with code 11 (connection refused)', async (t) => {
  const socket = join(await tempDir(t), 'cni.sock');
  await writeFile(socket, ''); // connect(2) to a non-socket file is ECONNREFUSED
  const r = await invoke(t, podEnv('ADD'), netConf('1.1.0', socket));
  assertCniError(t, r, 11, /\(connection refused\): refusing to start pod demo\/web-0 outside the mesh$/);
});

test('ADD gives up after agent_timeout_ms on an agent that never answers (code 11)', async (t) => {
  const agent = await startFakeAgent(t);
  agent.reply(EVENT_PATHS.add, 'hang');
  const started = Date.now();
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', agent.socket, { agent_timeout_ms: 200 }));
  const elapsed = Date.now() - started;
  assertCniError(t, r, 11, /\(no reply within 200 ms\): refusing to start pod demo\/web-0 outside the mesh/);
  t.true(elapsed >= 190, `took ${elapsed} ms`); // no upper bound: a loaded machine starts the plugin slowly; the message proves it gave up
  t.is(agent.requests.length, 1);
});

for (const [label, status, body] of [
  ['a spec code', 500, { code: 3, msg: 'netns /var/run/netns/cni-1234 is gone', details: 'was the sandbox deleted?' }],
  ['try again later', 503, { code: 11, msg: 'agent is starting' }],
  ['a plugin-specific code', 422, { code: 120, msg: 'policy forbids enrolment' }],
] as const) {
  test(`ADD passes an agent error with ${label} (code ${body.code}) through unchanged`, async (t) => {
    const agent = await startFakeAgent(t);
    agent.reply(EVENT_PATHS.add, { status, body });
    const r = await invoke(t, podEnv('ADD'), netConf('1.1.0', agent.socket));
    assertCniError(t, r, body.code);
    t.is(r.out?.msg, body.msg);
    t.is(r.out?.details, 'details' in body ? body.details : undefined);
  });
}

for (const [label, reply] of [
  ['a 2xx verdict without result', { status: 200, body: { verdict: 'yes' } }],
  ['an error status without an EventError body', { status: 500, body: { error: 'boom' } }],
  ['an error code outside 1..999', { status: 500, body: { code: 0, msg: 'zero' } }],
] as const) {
  test(`ADD reports ${label} from the agent as an internal error (999)`, async (t) => {
    const agent = await startFakeAgent(t);
    agent.reply(EVENT_PATHS.add, reply);
    const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', agent.socket));
    assertCniError(t, r, 999, /unreadable reply from the ambient-node agent/);
  });
}

test('ADD sends the records it logged so far as pluginLog, and logs JSON to stderr only', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', agent.socket, { prevResult: prevResultFor('1.0.0') }));
  t.is(r.code, 0);
  const ev = onlyEvent(t, agent.requests);
  const rec = ev.pluginLog?.find((l) => l.msg === 'asking agent to enroll pod');
  t.truthy(rec, JSON.stringify(ev.pluginLog));
  t.like(rec, { level: 30, command: 'ADD', containerId: POD.containerId, pod: 'demo/web-0', podUid: POD.uid });
  t.deepEqual(rec?.ips, ['10.244.1.5/24', 'fd00:10:244:1::5/64']);
  t.true(typeof rec?.time === 'number');
  // Every stderr line is a pino record (invoke parsed them); the sent record was among them.
  t.true(r.logs.some((l) => l.msg === 'asking agent to enroll pod'));
  t.true(r.logs.some((l) => l.msg === 'agent verdict' && l.result === 'enrolled'));
});

test('log_level from the config filters both stderr and pluginLog', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', agent.socket, { log_level: 'warn' }));
  t.is(r.code, 0);
  t.deepEqual(r.logs, []);
  t.deepEqual(onlyEvent(t, agent.requests).pluginLog, []);
});

test('a failed ADD logs the failure to stderr and prints only the error JSON on stdout', async (t) => {
  const socket = join(await tempDir(t), 'cni.sock');
  const r = await invoke(t, podEnv('ADD'), netConf('1.0.0', socket));
  assertCniError(t, r, 11);
  t.deepEqual(Object.keys(r.out ?? {}).sort(), ['cniVersion', 'code', 'details', 'msg']);
  t.true(r.logs.some((l) => l.msg === 'command failed' && l.code === 11 && l.level === 50));
});
