// The agent's event socket under bad input: oversized, malformed and misrouted requests get a clear error
// with a CNI code, and the agent's pods are untouched afterwards. Also the node CLI against a live agent.
import http from 'node:http';
import { statSync } from 'node:fs';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AGENT_MAIN } from '../testbed/index.js';
import { AMBIENT, agentPods } from './helpers.js';

function raw(socketPath: string, method: string, path: string, body: string | Buffer): Promise<{ status: number; json: { code?: number; msg?: string } }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, method, path, headers: { 'content-type': 'application/json' } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        // Parsed inside an event callback: a non-JSON body must reject, not throw uncaught (which ends the whole file).
        try {
          resolve({ status: res.statusCode ?? 0, json: JSON.parse(Buffer.concat(chunks).toString() || '{}') as { code?: number; msg?: string } });
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('error', (err: NodeJS.ErrnoException) => (err.code === 'EPIPE' || err.code === 'ECONNRESET' ? resolve({ status: 413, json: {} }) : reject(err)));
    req.end(body);
  });
}

netnsTest.serial('bad requests on the event socket get clear errors and lose no state', async (t) => {
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', AMBIENT);
  const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
  const sock = tb.node(0).socketPath;
  t.is(statSync(sock).mode & 0o777, 0o600, 'socket is root-only');

  const big = await raw(sock, 'POST', '/v1/cni/add', Buffer.alloc(2 * 1024 * 1024, 0x20));
  t.is(big.status, 413);
  const bad = await raw(sock, 'POST', '/v1/cni/add', '{"command": "ADD",');
  t.deepEqual([bad.status, bad.json.code], [400, 6]);
  const wrong = await raw(sock, 'POST', '/v1/cni/add', JSON.stringify({ command: 'ADD', cniVersion: '1.0.0', containerId: 'x', ifname: 'eth0' }));
  t.is(wrong.json.code, 7);
  t.regex(wrong.json.msg ?? '', /netns/);
  const unknown = await raw(sock, 'POST', '/v1/nope', '{}');
  t.is(unknown.status, 404);

  const pods = await agentPods(tb, 0);
  t.is(pods.find((p) => p.containerId === pod.containerId)?.state, 'enrolled', 'pod still enrolled');
  await t.notThrowsAsync(tb.checkPod(pod));
});

netnsTest.serial('node CLI: status, pods and certs in table and JSON form, exit 3 when the agent is down', async (t) => {
  const tb = await withTestbed(t, { nodes: 1 });
  await tb.setNamespace('app', AMBIENT);
  await tb.addPod({ node: 0, namespace: 'app', name: 'sleep' });
  const sock = tb.node(0).socketPath;
  const run = (...a: string[]) => tb.nodeExec(0, process.execPath, [AGENT_MAIN, ...a, '--socket', sock], { reject: false });

  const table = await run('pods');
  t.is(table.exitCode, 0);
  t.regex(String(table.stdout), /^POD\s+STATE\s+IP/m);
  t.regex(String(table.stdout), /app\/sleep\s+CAPTURED/);
  const json = await run('pods', '-o', 'json');
  t.is((JSON.parse(String(json.stdout)) as { pods: unknown[] }).pods.length, 1);
  const certs = await run('certs');
  t.is(certs.exitCode, 0);
  t.regex(String(certs.stdout), /^IDENTITY\s+STATE\s+SERIAL/m);
  t.regex(String(certs.stdout), /spiffe:\/\/cluster\.local\/ns\/app\/sa\/default\s+valid/);
  const certsJson = JSON.parse(String((await run('certs', '-o', 'json')).stdout)) as { identities: { identity: string }[] };
  t.deepEqual(certsJson.identities.map((i) => i.identity), ['spiffe://cluster.local/ns/app/sa/default']);
  const status = await run('status', '-o', 'json');
  t.like(JSON.parse(String(status.stdout)), { ready: true, backend: 'iptables', enrolled: 1 });

  await tb.agent(0).stop();
  const down = await run('status');
  t.is(down.exitCode, 3);
  t.regex(String(down.stderr), /agent is not answering/);
  const usage = await run('bogus-command');
  t.is(usage.exitCode, 2);
});
