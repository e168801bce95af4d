// Tests of the testbed itself: the CNI runtime's spec behaviour (fake plugins, no root needed) and the
// simulated cluster with the real reference plugins (root): connectivity, CHECK/DEL, rollback, isolation, cleanup.
import test from 'ava';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { appendFile, chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import {
  AgentNotReadyError,
  buildConflist,
  CniPluginError,
  CniRuntime,
  type CniConfList,
  k8sCniArgs,
  listNetns,
  podFileName,
  Testbed,
  type TestbedPod,
} from '../testbed/index.js';

// ---------------------------------------------------------------------------------------------
// CNI runtime with fake plugins (node scripts that log what they were given)

interface FakeCall {
  plugin: string;
  command: string;
  conf: Record<string, unknown>;
  env: Record<string, string>;
}

/** One node script installed under several names; behaviour depends on the name it runs as. */
function fakePluginSource(logPath: string): string {
  return `#!${process.execPath}
const fs = require('fs');
const path = require('path');
const name = path.basename(process.argv[1]);
const cmd = process.env.CNI_COMMAND;
const input = fs.readFileSync(0, 'utf8');
const conf = input ? JSON.parse(input) : {};
const env = {};
for (const [k, v] of Object.entries(process.env)) if (k.startsWith('CNI_')) env[k] = v;
fs.appendFileSync(${JSON.stringify(logPath)}, JSON.stringify({ plugin: name, command: cmd, conf, env }) + '\\n');
if (cmd === 'VERSION') {
  const versions = name === 'fake-new' ? ['0.4.0', '1.0.0', '1.1.0'] : ['0.4.0', '1.0.0'];
  process.stdout.write(JSON.stringify({ cniVersion: conf.cniVersion, supportedVersions: versions }));
  process.exit(0);
}
if (name === 'fake-fail' && cmd === 'ADD') {
  process.stderr.write('fake-fail: refusing on purpose\\n');
  process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', code: 11, msg: 'agent unreachable', details: 'socket gone' }));
  process.exit(1);
}
if (name === 'fake-garbage' && cmd === 'ADD') {
  process.stdout.write('this is not json');
  process.exit(0);
}
if (cmd === 'ADD') {
  const prev = conf.prevResult || { ips: [], trace: [] };
  const result = {
    cniVersion: conf.cniVersion,
    interfaces: [{ name: 'eth0', sandbox: process.env.CNI_NETNS }],
    ips: [...prev.ips, { address: conf.addr, interface: 0 }],
    trace: [...prev.trace, name],
  };
  process.stdout.write(JSON.stringify(result));
}
process.exit(0);
`;
}

async function fakeRuntime(plugins: CniConfList['plugins']): Promise<{ rt: CniRuntime; calls: () => Promise<FakeCall[]>; dir: string }> {
  const dir = await mkdtemp(join(tmpdir(), 'ambient-cnirt-fake-'));
  const log = join(dir, 'calls.log');
  await appendFile(log, '');
  for (const name of ['fake-a', 'fake-b', 'fake-new', 'fake-fail', 'fake-garbage']) {
    await writeFile(join(dir, name), fakePluginSource(log));
    await chmod(join(dir, name), 0o755);
  }
  const rt = new CniRuntime({
    conflist: { cniVersion: '1.0.0', name: 'fake-net', plugins },
    binDirs: [dir],
    cacheDir: join(dir, 'cache'),
    netns: null, // the fakes touch no network: run them right here
  });
  const calls = async (): Promise<FakeCall[]> =>
    (await readFile(log, 'utf8'))
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as FakeCall);
  return { rt, calls, dir };
}

const attachment = {
  containerId: 'c0ffee'.padEnd(64, '0'),
  netns: '/run/netns/fake-pod',
  ifname: 'eth0',
  args: k8sCniArgs({ namespace: 'ns1', name: 'pod1', uid: 'uid-1', infraContainerId: 'c0ffee'.padEnd(64, '0') }),
};

test('runtime: ADD chains prevResult in order, injects name/cniVersion, caches; CHECK and DEL use the cache', async (t) => {
  const { rt, calls, dir } = await fakeRuntime([
    { type: 'fake-a', addr: '10.0.0.1/24' },
    { type: 'fake-b', addr: '10.0.0.2/24' },
    { type: 'fake-new', addr: '10.0.0.3/24' },
  ]);
  t.teardown(() => rm(dir, { recursive: true, force: true }));

  const add = await rt.add(attachment);
  t.deepEqual(add.result.trace, ['fake-a', 'fake-b', 'fake-new']);
  t.deepEqual(add.invocations.map((i) => `${i.command} ${i.plugin}`), ['ADD fake-a', 'ADD fake-b', 'ADD fake-new']);
  t.true(add.invocations.every((i) => i.durationMs > 0));

  const adds = (await calls()).filter((c) => c.command === 'ADD');
  t.deepEqual(adds.map((c) => c.plugin), ['fake-a', 'fake-b', 'fake-new']);
  t.false('prevResult' in (adds[0]?.conf ?? {}), 'the first plugin gets no prevResult');
  t.deepEqual((adds[1]?.conf.prevResult as { trace: string[] }).trace, ['fake-a']);
  t.deepEqual((adds[2]?.conf.prevResult as { trace: string[] }).trace, ['fake-a', 'fake-b']);
  for (const c of adds) {
    t.is(c.conf.name, 'fake-net');
    t.is(c.conf.cniVersion, '1.0.0');
    t.is(c.env.CNI_CONTAINERID, attachment.containerId);
    t.is(c.env.CNI_NETNS, attachment.netns);
    t.is(c.env.CNI_IFNAME, 'eth0');
    t.is(c.env.CNI_PATH, dir);
    t.is(
      c.env.CNI_ARGS,
      `IgnoreUnknown=1;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=pod1;K8S_POD_INFRA_CONTAINER_ID=${attachment.containerId};K8S_POD_UID=uid-1`,
    );
  }
  const cached = await rt.readCache(attachment.containerId, 'eth0');
  t.deepEqual(cached?.result, add.result);
  t.true(existsSync(join(dir, 'cache', `${attachment.containerId}-eth0.json`)));

  await rt.check(attachment);
  const checks = (await calls()).filter((c) => c.command === 'CHECK');
  t.deepEqual(checks.map((c) => c.plugin), ['fake-a', 'fake-b', 'fake-new']);
  t.true(checks.every((c) => JSON.stringify(c.conf.prevResult) === JSON.stringify(add.result)), 'CHECK gets the cached result');

  await rt.del(attachment);
  const dels = (await calls()).filter((c) => c.command === 'DEL');
  t.deepEqual(dels.map((c) => c.plugin), ['fake-new', 'fake-b', 'fake-a'], 'DEL runs in reverse');
  t.true(dels.every((c) => JSON.stringify(c.conf.prevResult) === JSON.stringify(add.result)), 'DEL gets the cached result');
  t.is(await rt.readCache(attachment.containerId, 'eth0'), undefined, 'DEL removes the cache entry');
  await t.throwsAsync(rt.check(attachment), { message: /no cached result/ });
});

test('runtime: a plugin error rolls back the whole list and surfaces the CNI error JSON and stderr', async (t) => {
  const { rt, calls, dir } = await fakeRuntime([
    { type: 'fake-a', addr: '10.0.0.1/24' },
    { type: 'fake-fail' },
    { type: 'fake-b', addr: '10.0.0.2/24' },
  ]);
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const err = await t.throwsAsync(rt.add(attachment), { instanceOf: CniPluginError });
  t.is(err?.command, 'ADD');
  t.is(err?.plugin, 'fake-fail');
  t.is(err?.failure, 'plugin-error');
  t.deepEqual(err?.cniError, { cniVersion: '1.0.0', code: 11, msg: 'agent unreachable', details: 'socket gone' });
  t.regex(err?.stderr ?? '', /refusing on purpose/);
  t.deepEqual(err?.rollbackErrors, []);
  const seq = (await calls()).map((c) => `${c.command} ${c.plugin}`);
  t.deepEqual(seq, ['ADD fake-a', 'ADD fake-fail', 'DEL fake-b', 'DEL fake-fail', 'DEL fake-a']);
  t.deepEqual(await rt.cachedAttachments(), [], 'nothing cached after a failed ADD');
});

test('runtime: non-JSON stdout and a missing plugin are errors naming the plugin', async (t) => {
  const garbage = await fakeRuntime([{ type: 'fake-a', addr: '10.0.0.1/24' }, { type: 'fake-garbage' }]);
  t.teardown(() => rm(garbage.dir, { recursive: true, force: true }));
  const e1 = await t.throwsAsync(garbage.rt.add(attachment), { instanceOf: CniPluginError });
  t.is(e1?.failure, 'bad-output');
  t.regex(e1?.message ?? '', /"fake-garbage"/);

  const missing = await fakeRuntime([{ type: 'fake-a', addr: '10.0.0.1/24' }, { type: 'no-such-plugin' }]);
  t.teardown(() => rm(missing.dir, { recursive: true, force: true }));
  const e2 = await t.throwsAsync(missing.rt.add(attachment), { instanceOf: CniPluginError });
  t.is(e2?.failure, 'not-found');
  t.is(e2?.plugin, 'no-such-plugin');
  t.is(e2?.rollbackErrors.length, 1, 'the rollback DEL of the missing plugin fails too, fake-a is still deleted');
  t.deepEqual((await missing.calls()).map((c) => `${c.command} ${c.plugin}`), ['ADD fake-a', 'DEL fake-a']);
});

test('runtime: STATUS and GC run only on plugins supporting 1.1.0, with valid-attachments from the cache', async (t) => {
  const { rt, calls, dir } = await fakeRuntime([
    { type: 'fake-a', addr: '10.0.0.1/24' },
    { type: 'fake-new', addr: '10.0.0.3/24' },
  ]);
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  await rt.add(attachment);
  const other = { ...attachment, containerId: 'beef'.padEnd(64, '1') };
  await rt.add(other);

  const status = await rt.status();
  t.deepEqual(status.plugins.map((p) => [p.plugin, p.ran]), [['fake-a', false], ['fake-new', true]]);
  const gc = await rt.gc();
  t.deepEqual(gc.deleted, []);
  const all = await calls();
  const st = all.filter((c) => c.command === 'STATUS');
  t.deepEqual(st.map((c) => c.plugin), ['fake-new']);
  t.is(st[0]?.conf.cniVersion, '1.1.0');
  const gcs = all.filter((c) => c.command === 'GC');
  t.deepEqual(gcs.map((c) => c.plugin), ['fake-new']);
  t.is(gcs[0]?.conf.cniVersion, '1.1.0');
  t.is(gcs[0]?.env.CNI_CONTAINERID, undefined);
  const valid = gcs[0]?.conf['cni.dev/valid-attachments'] as { containerID: string; ifname: string }[];
  t.deepEqual(
    valid.map((a) => a.containerID).sort(),
    [attachment.containerId, other.containerId].sort(),
  );

  // Explicit valid list: the stale cached attachment gets a DEL first, like libcni.
  const gc2 = await rt.gc({ validAttachments: [{ containerID: attachment.containerId, ifname: 'eth0' }] });
  t.deepEqual(gc2.deleted, [{ containerID: other.containerId, ifname: 'eth0' }]);
  t.deepEqual((await rt.cachedAttachments()).map((c) => c.containerId), [attachment.containerId]);
});

// ---------------------------------------------------------------------------------------------
// The simulated cluster (root)

async function leftovers(id: string): Promise<string[]> {
  return (await listNetns()).filter((n) => n.includes(`atb-${id}-`));
}

async function tcpRoundTrip(client: TestbedPod, server: TestbedPod, port: number): Promise<string> {
  const r = await client.exec('ncat', ['--no-shutdown', '-w', '3', server.ip, String(port)], { input: `hello-from-${client.name}\n`, timeout: 10_000 });
  return String(r.stdout).trim();
}

netnsTest('cluster: 2 nodes x 2 pods, cross-node ping and TCP, CHECK, DEL, full teardown', async (t) => {
  const tb = await withTestbed(t, { nodes: 2, withAmbientCni: false, agent: false });
  t.regex(tb.id, /^[0-9a-f]{4}$/);
  t.deepEqual((await leftovers(tb.id)).sort(), [`atb-${tb.id}-fabric`, `atb-${tb.id}-n0`, `atb-${tb.id}-n1`].sort());

  await tb.setNamespace('demo', { 'istio.io/dataplane-mode': 'ambient' });
  const pods = await tb.addPods([
    { node: 0, namespace: 'demo', name: 'a0', labels: { app: 'a' } },
    { node: 0, namespace: 'demo', name: 'a1' },
    { node: 1, namespace: 'demo', name: 'b0', serviceAccount: 'sa-b' },
    { node: 1, namespace: 'demo', name: 'b1' },
  ]);
  const [a0, a1, b0, b1] = pods;
  if (a0 === undefined || a1 === undefined || b0 === undefined || b1 === undefined) return t.fail('pods missing');
  t.regex(a0.ip, /^10\.244\.0\.\d+$/);
  t.regex(b0.ip, /^10\.244\.1\.\d+$/);
  t.is(new Set(pods.map((p) => p.ip)).size, 4);
  t.true(a0.addOutcome.invocations.every((i) => i.command === 'ADD' && i.durationMs > 0));
  t.true(existsSync(join(a0.node.ipamDir, 'ambient-tb', a0.ip)), 'host-local lease in the run dir');

  // The Pod YAML carries the node, labels, service account and (after ADD) the IP.
  const yaml = parse(await readFile(join(tb.workloadsDir, podFileName('demo', 'b0')), 'utf8')) as {
    metadata: { uid: string; labels: Record<string, string> };
    spec: { nodeName: string; serviceAccountName: string };
    status: { podIP: string };
  };
  t.is(yaml.spec.nodeName, tb.node(1).name);
  t.is(yaml.spec.serviceAccountName, 'sa-b');
  t.is(yaml.status.podIP, b0.ip);
  t.is(yaml.metadata.uid, b0.uid);
  t.true(existsSync(join(tb.workloadsDir, 'ns-demo.yaml')));

  // lo is up in the pod netns.
  t.regex(String((await a0.exec('ip', ['-o', 'link', 'show', 'lo'])).stdout), /UP/);

  // Ping across nodes and on the same node.
  await a0.exec('ping', ['-c', '1', '-W', '2', b0.ip]);
  await b1.exec('ping', ['-c', '1', '-W', '2', a1.ip]);
  await a0.exec('ping', ['-c', '1', '-W', '2', a1.ip]);

  // TCP across nodes, both directions, and a kubelet-style probe from the node.
  const serverA = a1.spawn('ncat', ['-l', '-k', '8080', '--sh-exec', 'read l; echo "pong:$l"']);
  const serverB = b0.spawn('ncat', ['-l', '-k', '8080', '--sh-exec', 'read l; echo "pong:$l"']);
  await a1.waitForPort(8080);
  await b0.waitForPort(8080);
  t.is(await tcpRoundTrip(a0, b0, 8080), 'pong:hello-from-a0');
  t.is(await tcpRoundTrip(b1, a1, 8080), 'pong:hello-from-b1');
  await tb.nodeExec(1, 'ncat', ['-z', '-w', '2', b0.ip, '8080']);
  await tb.nodeExec(0, 'ncat', ['-z', '-w', '2', b0.ip, '8080']);

  // CHECK passes; DEL removes the interface (netns still there); deletePod cleans up the rest.
  const check = await tb.checkPod(b1);
  t.deepEqual(check.invocations.map((i) => `${i.command} ${i.plugin}`), ['CHECK bridge']);
  await b1.node.cni.del(b1.attachment);
  const linkAfterDel = await b1.exec('ip', ['link', 'show', 'eth0'], { reject: false });
  t.not(linkAfterDel.exitCode, 0, 'eth0 is gone after DEL');
  t.is(await b1.node.cni.readCache(b1.containerId, 'eth0'), undefined);
  await tb.deletePod(b1); // DEL again is idempotent
  t.false((await leftovers(tb.id)).includes(b1.netnsName));
  t.false(existsSync(join(tb.workloadsDir, podFileName('demo', 'b1'))));
  t.false(tb.pods.includes(b1));

  // Teardown: servers killed, no netns with the run id, run dir gone; idempotent.
  const pids = [serverA.pid, serverB.pid].filter((p): p is number => p !== undefined);
  t.is(pids.length, 2);
  await tb.destroy();
  await tb.destroy();
  t.deepEqual(await leftovers(tb.id), []);
  t.false(existsSync(tb.runDir));
  for (const pid of pids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
});

netnsTest('cluster: two testbeds at once do not collide', async (t) => {
  const [x, y] = await Promise.all([
    Testbed.create({ nodes: 2, withAmbientCni: false, agent: false }),
    Testbed.create({ nodes: 2, withAmbientCni: false, agent: false }),
  ]);
  t.teardown(() => Promise.all([x.destroy(), y.destroy()]));
  t.not(x.id, y.id);
  const [px, py] = await Promise.all([
    x.addPods([{ node: 0, name: 'p' }, { node: 1, name: 'q' }]),
    y.addPods([{ node: 0, name: 'p' }, { node: 1, name: 'q' }]),
  ]);
  // Same addresses in both clusters, each reachable only inside its own.
  t.deepEqual(px.map((p) => p.ip), py.map((p) => p.ip));
  for (const [p, q] of [px, py]) {
    if (p === undefined || q === undefined) return t.fail('pods missing');
    await p.exec('ping', ['-c', '1', '-W', '2', q.ip]);
  }
  await x.destroy();
  t.deepEqual(await leftovers(x.id), []);
  t.true((await leftovers(y.id)).length >= 5, 'destroying one testbed leaves the other alone');
  const [yp, yq] = py;
  if (yp === undefined || yq === undefined) return t.fail('pods missing');
  await yp.exec('ping', ['-c', '1', '-W', '2', yq.ip]);
  await y.destroy();
  t.deepEqual(await leftovers(y.id), []);
});

netnsTest('cluster: a failing chained plugin rolls back the ADD with a typed error and leaves nothing', async (t) => {
  // node 0 chains a plugin that does not exist; node 1 one that prints a CNI error (like an unreachable agent).
  const tb = await withTestbed(t, {
    nodes: 2,
    withAmbientCni: false,
    agent: false,
    conflist: (node, list) => ({
      ...list,
      plugins: [...list.plugins, node.index === 0 ? { type: 'does-not-exist' } : { type: 'refuse' }],
    }),
  });
  const refuse = join(tb.binDir, 'refuse');
  await writeFile(
    refuse,
    `#!/bin/sh
cat > /dev/null
echo "$CNI_COMMAND" >> ${tb.runDir}/refuse.calls
if [ "$CNI_COMMAND" = ADD ]; then
  echo 'refuse: agent said no' >&2
  echo '{"cniVersion":"1.0.0","code":11,"msg":"agent unreachable","details":"dial unix: no such file"}'
  exit 1
fi
`,
  );
  await chmod(refuse, 0o755);
  const before = (await leftovers(tb.id)).sort();

  const e0 = await t.throwsAsync(tb.addPod({ node: 0, name: 'doomed' }), { instanceOf: CniPluginError });
  t.is(e0?.failure, 'not-found');
  t.is(e0?.plugin, 'does-not-exist');

  const e1 = await t.throwsAsync(tb.addPod({ node: 1, name: 'refused' }), { instanceOf: CniPluginError });
  t.is(e1?.failure, 'plugin-error');
  t.is(e1?.cniError?.code, 11);
  t.is(e1?.cniError?.msg, 'agent unreachable');
  t.is(e1?.cniError?.details, 'dial unix: no such file');
  t.regex(e1?.stderr ?? '', /agent said no/);
  t.deepEqual(e1?.rollbackErrors, []);
  t.deepEqual((await readFile(join(tb.runDir, 'refuse.calls'), 'utf8')).trim().split('\n'), ['ADD', 'DEL']);

  // No pod netns, no YAML, no cache entry, IPs released, no pod veth left on the nodes.
  t.deepEqual((await leftovers(tb.id)).sort(), before);
  t.deepEqual(tb.pods, []);
  t.deepEqual(readdirSync(tb.workloadsDir).filter((f) => f.startsWith('pod-')), []);
  for (const node of tb.nodes) {
    t.deepEqual(await node.cni.cachedAttachments(), []);
    const ipamNet = join(node.ipamDir, 'ambient-tb');
    const leased = existsSync(ipamNet) ? readdirSync(ipamNet).filter((f) => /^\d+\.\d+\.\d+\.\d+$/.test(f)) : [];
    t.deepEqual(leased, [], `${node.name}: host-local leases released`);
    const veths = await tb.nodeExec(node, 'ip', ['-o', 'link', 'show', 'type', 'veth']);
    t.deepEqual(String(veths.stdout).split('\n').filter((l) => l.trim() !== '' && !/ eth0@/.test(l)), [], `${node.name}: no pod veth`);
  }

  // A retry (what kubelet does) fails the same way and still leaves nothing behind.
  await t.throwsAsync(tb.addPod({ node: 1, name: 'refused' }), { instanceOf: CniPluginError });
  t.deepEqual((await leftovers(tb.id)).sort(), before);
});

// ---------------------------------------------------------------------------------------------
// Agent processes, with a stand-in agent (the real one lives in agent/ and is started the same way)

const FAKE_AGENT = `
const http = require('http');
const fs = require('fs');
const args = process.argv.slice(2);
const get = (k) => args[args.indexOf(k) + 1];
const sock = get('--socket');
const node = get('--node-name');
const log = (msg, extra) => process.stdout.write(JSON.stringify({ level: 30, time: Date.now(), msg, node, ...extra }) + '\\n');
if (process.env.FAKE_AGENT_MODE === 'crash') { log('boom'); process.exit(3); }
try { fs.unlinkSync(sock); } catch {}
const netns = fs.readlinkSync('/proc/self/ns/net');
const server = http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  if (req.url === '/v1/status') res.end(JSON.stringify({ ready: true, node, netns, pid: process.pid }));
  else { res.statusCode = 404; res.end('{}'); }
});
server.listen(sock, () => log('agent ready', { argv: args }));
process.on('SIGTERM', () => { log('stopping'); server.close(); process.exit(0); });
`;

netnsTest('agents: started in the node netns, ready via /v1/status, kill -9, restart, stop, logs', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambient-fake-agent-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'fake-agent.cjs');
  await writeFile(script, FAKE_AGENT);
  const tb = await withTestbed(t, { nodes: 2, withAmbientCni: false, agentCommand: [process.execPath, script], redirectMode: 'nftables' });

  for (const node of tb.nodes) {
    const agent = tb.agent(node);
    t.true(agent.running);
    const status = (await agent.request('GET', '/v1/status')).body as { ready: boolean; node: string; netns: string };
    t.is(status.node, node.name);
    t.is(status.netns, `net:[${statSync(node.netnsPath).ino}]`, 'the agent lives in its node netns');
    const ready = (await agent.logs()).find((r) => r.msg === 'agent ready');
    const argv = ready?.argv as string[];
    t.deepEqual(argv, [
      'agent',
      ...['--node-name', node.name, '--state-dir', node.stateDir, '--socket', node.socketPath],
      ...['--workloads-dir', tb.workloadsDir, '--ca-dir', tb.caDir, '--redirect-mode', 'nftables', '--log-level', 'debug'],
    ]);
  }

  const a0 = tb.agent(0);
  const firstPid = a0.pid;
  const exit = await a0.kill('SIGKILL');
  t.is(exit?.signal, 'SIGKILL');
  t.false(a0.running);
  t.is(a0.pid, undefined);
  await a0.start();
  t.not(a0.pid, firstPid);
  t.is((await a0.logs()).filter((r) => r.msg === 'agent ready').length, 2);
  t.is((await a0.logs({ currentRun: true })).filter((r) => r.msg === 'agent ready').length, 1);
  const stopped = await a0.stop();
  t.is(stopped?.code, 0);
  t.truthy((await a0.logs()).find((r) => r.msg === 'stopping'));
  await a0.start();

  const pids = tb.nodes.map((n) => tb.agent(n).pid).filter((p): p is number => p !== undefined);
  t.is(pids.length, 2);
  await tb.destroy();
  for (const pid of pids) t.throws(() => process.kill(pid, 0), { code: 'ESRCH' });
  t.deepEqual(await leftovers(tb.id), []);
});

netnsTest('agents: an agent that dies at start fails create() with its log tail and leaves nothing', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ambient-fake-agent-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const script = join(dir, 'fake-agent.cjs');
  await writeFile(script, `process.env.FAKE_AGENT_MODE = 'crash';\n${FAKE_AGENT}`);
  const err = await t.throwsAsync(
    Testbed.create({ nodes: 1, withAmbientCni: false, agentCommand: [process.execPath, script], agentReadyTimeoutMs: 5000 }),
    { instanceOf: AgentNotReadyError },
  );
  t.regex(err?.logTail ?? '', /boom/);
  const id = /^atb-([0-9a-f]{4})-n0$/.exec(err?.nodeName ?? '')?.[1];
  if (id === undefined) return t.fail(`unexpected node name ${err?.nodeName}`);
  t.deepEqual(await leftovers(id), []);
  t.false(existsSync(`/tmp/ambient-tb-${id}`));
});

test('conflist: bridge + host-local with the node subnet, then ambient-cni with the node socket', (t) => {
  const list = buildConflist(
    { index: 3, ipamDir: '/tmp/x/ipam/n3', socketPath: '/tmp/x/n3.sock' },
    { withAmbientCni: true, cniLogLevel: 'info', agentTimeoutMs: 10_000 },
  );
  t.deepEqual(list, {
    cniVersion: '1.0.0',
    name: 'ambient-tb',
    plugins: [
      {
        type: 'bridge',
        bridge: 'cni0',
        isGateway: true,
        ipMasq: false,
        ipam: {
          type: 'host-local',
          ranges: [[{ subnet: '10.244.3.0/24', gateway: '10.244.3.1' }]],
          routes: [{ dst: '0.0.0.0/0' }],
          dataDir: '/tmp/x/ipam/n3',
        },
      },
      { type: 'ambient-cni', agent_socket: '/tmp/x/n3.sock', agent_timeout_ms: 10_000, log_level: 'info' },
    ],
  });
  const plain = buildConflist({ index: 0, ipamDir: '/i', socketPath: '/s' }, { withAmbientCni: false, cniLogLevel: 'info', agentTimeoutMs: 1 });
  t.deepEqual(plain.plugins.map((p) => p.type), ['bridge']);
});
