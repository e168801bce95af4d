// The node debugging commands `rules`, `conns` and `policy check` against a live two-node testbed, in table and JSON
// form with their exit codes, and the access log lines the agents write for allowed, denied and held connections.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { ConnectionSnapshot } from '../../agent/src/forwarder/connections.js';
import type { PolicyCheckResult } from '../../agent/src/policy/check.js';
import type { RulesReply } from '../../agent/src/server/event-server.js';
import { ask, bookinfo, cli, eventually } from './helpers.js';

const SLEEP = 'spiffe://cluster.local/ns/app/sa/sleep';
const NOTSLEEP = 'spiffe://cluster.local/ns/app/sa/notsleep';
const PRODUCTPAGE = 'spiffe://cluster.local/ns/app/sa/productpage';

netnsTest.serial('node CLI: policy check, conns and rules in table and JSON form; access log lines', async (t) => {
  // No repair loop: the drift made below must stay for `rules` to show it.
  const tb = await withTestbed(t, { nodes: 2, agentArgs: ['--repair-interval-ms', '0'] });
  const { productpage, sleep, notsleep } = await bookinfo(tb);
  await tb.writeWorkload('allow-sleep.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
    metadata: { name: 'allow-sleep', namespace: 'app' },
    spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }] },
  });
  t.false((await eventually(() => ask(notsleep, productpage.ip, 9080, 'n'), (a) => !a.ok, 6000)).ok, 'notsleep is denied');
  t.true((await ask(sleep, productpage.ip, 9080, 'hello')).ok, 'sleep is allowed');

  // policy check: the decision, the policy that made it, exit 0 allow / 1 deny / 2 for what names nothing.
  const node1 = cli(tb, 1);
  const allow = await node1('policy', 'check', '--from', 'app/sleep', '--to', 'app/productpage:9080');
  t.is(allow.exitCode, 0, allow.stderr);
  t.regex(allow.stdout, /^ALLOW\s+spiffe:\/\/cluster\.local\/ns\/app\/sa\/sleep -> app\/productpage/);
  t.regex(allow.stdout, /decided by: app\/allow-sleep/);
  t.regex(allow.stdout, /PeerAuthentication PERMISSIVE on port 9080/);
  const deny = await node1('policy', 'check', '--from', 'app/notsleep', '--to', 'app/productpage:9080', '-o', 'json');
  t.is(deny.exitCode, 1);
  const denyJson = JSON.parse(deny.stdout) as PolicyCheckResult;
  t.like(denyJson, { allowed: false, from: { principal: NOTSLEEP }, to: { pod: 'app/productpage', ip: productpage.ip, port: 9080 }, mtlsMode: 'PERMISSIVE' });
  t.deepEqual(denyJson.applicable, ['app/allow-sleep (ALLOW)']);
  const unknown = await node1('policy', 'check', '--from', 'app/sleep', '--to', 'app/nosuchpod:9080');
  t.is(unknown.exitCode, 2);
  t.regex(unknown.stderr, /no Service or pod app\/nosuchpod in the workload source/);
  const badArg = await node1('policy', 'check', '--from', 'sleep', '--to', 'app/productpage:9080');
  t.is(badArg.exitCode, 2);
  t.regex(badArg.stderr, /--from must be <namespace>\/<serviceaccount>/);

  // Access log: the destination's agent logged the allowed connection complete and the denied one failed.
  const access1 = await eventually(async () => (await tb.agent(1).logs({ currentRun: true })).filter((l) => l.scope === 'access'),
    (ls) => ls.some((l) => l.msg === 'connection complete' && l['src.identity'] === SLEEP), 6000);
  const done = access1.find((l) => l.msg === 'connection complete' && l['src.identity'] === SLEEP);
  t.like(done, {
    direction: 'inbound', 'dst.workload': 'productpage', 'dst.namespace': 'app', 'dst.identity': PRODUCTPAGE, 'dst.addr': `${productpage.ip}:15008`,
    'dst.hbone_addr': `${productpage.ip}:9080`, 'src.workload': 'sleep', connection_security_policy: 'mutual_tls', response_flags: '-',
  });
  // "hello\n" went from sleep to productpage; the echo's answer ("pong:hello from <addr>\n") came back.
  t.is(done?.bytes_sent, 6, JSON.stringify(done));
  t.true(Number(done?.bytes_recv) > 'pong:hello from '.length, JSON.stringify(done));
  t.regex(String(done?.duration), /^\d+ms$/);
  const failed = access1.find((l) => l.msg === 'connection failed' && l['src.identity'] === NOTSLEEP);
  t.like(failed, { response_flags: 'DENY', direction: 'inbound', 'dst.workload': 'productpage' });
  t.regex(String(failed?.error), /no rule of the applicable ALLOW policies matched \(app\/allow-sleep\)/);
  t.true((failed?.level ?? 0) >= 50, 'failures are logged at error level');
  const access0 = await eventually(async () => (await tb.agent(0).logs({ currentRun: true })).filter((l) => l.scope === 'access'),
    (ls) => ls.some((l) => l.msg === 'connection complete' && l['dst.identity'] === PRODUCTPAGE && l.response_flags === '-'), 6000);
  t.true(access0.some((l) => l.direction === 'outbound' && l['src.identity'] === SLEEP && l['dst.addr'] === `${productpage.ip}:15008` && l['dst.hbone_addr'] === `${productpage.ip}:9080`));

  // conns: a connection held open shows on both nodes with its identities and bytes.
  void productpage.spawn('ncat', ['-l', '-k', '9090', '--sh-exec', 'cat']).catch(() => undefined);
  await productpage.waitForPort(9090);
  const held = sleep.spawn('sh', ['-c', `(echo held-open; sleep 30) | ncat ${productpage.ip} 9090`], { reject: false, timeout: 40_000 });
  try {
    const node0 = cli(tb, 0);
    const out0 = await eventually(async () => JSON.parse((await node0('conns', '-o', 'json')).stdout) as { connections: ConnectionSnapshot[] },
      (r) => r.connections.some((c) => c.dst.addr === `${productpage.ip}:9090` && c.bytesRecv > 0), 6000);
    t.like(out0.connections.find((c) => c.dst.addr === `${productpage.ip}:9090`), {
      pod: 'app/sleep', direction: 'outbound', mtls: true, src: { principal: SLEEP }, dst: { principal: PRODUCTPAGE, workload: 'productpage' },
    });
    const in1 = JSON.parse((await node1('conns', '--pod', 'app/productpage', '-o', 'json')).stdout) as { connections: ConnectionSnapshot[] };
    t.like(in1.connections.find((c) => c.dst.addr === `${productpage.ip}:9090`), { direction: 'inbound', mtls: true, src: { principal: SLEEP, workload: 'sleep' } });
    const table = await node0('conns');
    t.is(table.exitCode, 0);
    t.regex(table.stdout, /^POD\s+DIRECTION\s+SRC\s+SRC-IDENTITY\s+DST\s+DST-IDENTITY\s+SERVICE\s+SECURITY\s+SENT\s+RECEIVED\s+AGE/m);
    t.regex(table.stdout, new RegExp(`app/sleep\\s+outbound\\s+\\S+\\s+cluster\\.local/ns/app/sa/sleep\\s+${productpage.ip.replace(/\./g, '\\.')}:9090\\s+cluster\\.local/ns/app/sa/productpage\\s+-\\s+mTLS`));
    t.is(JSON.parse((await node0('conns', '--pod', 'app/notsleep', '-o', 'json')).stdout).connections.length, 0, '--pod filters');
  } finally {
    held.kill();
  }

  // status as a table (its JSON form and the agent-down exit code are covered in agent-api.test.ts).
  const node0 = cli(tb, 0);
  const status = await node0('status');
  t.is(status.exitCode, 0);
  t.regex(status.stdout, /^NODE\s+READY\s+BACKEND\s+ENROLLED\n\S+\s+yes\s+iptables\s+2$/m);

  // rules: in sync, then drift after a hand flush (exit 1), unknown pod (exit 2).
  const synced = await node0('rules', 'app/sleep');
  t.is(synced.exitCode, 0, synced.stdout);
  t.regex(synced.stdout, /pod app\/sleep .*\n\s+state enrolled, backend iptables, agent listeners open/);
  t.regex(synced.stdout, /^\s+in sync$/m);
  t.regex(synced.stdout, /node probe rules: in sync/);
  const syncedJson = JSON.parse((await node0('rules', 'app/sleep', '-o', 'json')).stdout) as RulesReply;
  const a = syncedJson.attachments[0];
  t.true(a?.ok);
  t.true((a?.expected.length ?? 0) > 3);
  t.deepEqual([...(a?.actual ?? [])].sort(), [...(a?.expected ?? [])].sort(), 'the rules found are the rules expected');

  await sleep.exec('iptables', ['-t', 'nat', '-F', 'AMBIENT_OUTPUT']);
  const drifted = await node0('rules', 'app/sleep');
  t.is(drifted.exitCode, 1);
  t.regex(drifted.stdout, /MISSING -A AMBIENT_OUTPUT/);
  t.regex(drifted.stdout, /DRIFT: \d+ missing, 0 unexpected/);
  const driftedJson = JSON.parse((await node0('rules', 'app/sleep', '-o', 'json')).stdout) as RulesReply;
  t.false(driftedJson.attachments[0]?.ok);
  t.true((driftedJson.attachments[0]?.missing.length ?? 0) > 0, 'the JSON form reports the missing rules');
  t.true(driftedJson.attachments[0]?.missing.every((l) => l.startsWith('-A AMBIENT_OUTPUT')));
  const missingPod = await node0('rules', 'app/nosuchpod');
  t.is(missingPod.exitCode, 2);
  t.regex(missingPod.stderr, /not known to the agent on this node/);
});
