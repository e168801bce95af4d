// AuthorizationPolicy end to end: the seeds' scenario (only sleep may reach productpage), DENY over ALLOW, a policy
// change closing an open connection it now denies, dry-run policies that only log, and malformed policies failing closed.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { adminHttp, agentPod, ask, bookinfo, cli, eventually } from './helpers.js';

const policy = (name: string, spec: Record<string, unknown>, annotations?: Record<string, string>): Record<string, unknown> => ({
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
  metadata: { name, namespace: 'app', ...(annotations ? { annotations } : {}) }, spec,
});

const allowSleep = policy('productpage-viewer', {
  selector: { matchLabels: { app: 'productpage' } },
  action: 'ALLOW',
  rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }],
});

netnsTest.serial('ALLOW admits only sleep; notsleep is refused; a DENY overrides the ALLOW', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  const { productpage, sleep, notsleep } = await bookinfo(tb);
  t.true((await ask(notsleep, productpage.ip, 9080, 'before')).ok, 'no policy: allowed');

  await tb.writeWorkload('authz-allow.yaml', allowSleep);
  const denied = await eventually(() => ask(notsleep, productpage.ip, 9080, 'n'), (a) => !a.ok, 6000);
  t.false(denied.ok, 'notsleep is refused');
  t.true((await ask(sleep, productpage.ip, 9080, 's')).ok, 'sleep gets through');
  t.true(((await agentPod(tb, productpage))?.stats?.inbound.denied ?? 0) >= 1, 'the denial is counted');
  const logs = await tb.agent(1).logs({ currentRun: true });
  t.true(logs.some((l) => l.scope === 'access' && l.msg === 'connection failed' && l.response_flags === 'DENY' && l['src.identity'] === 'spiffe://cluster.local/ns/app/sa/notsleep'), 'the access log has the denial');

  await tb.writeWorkload('authz-deny.yaml', policy('deny-sleep', {
    selector: { matchLabels: { app: 'productpage' } },
    action: 'DENY',
    rules: [{ from: [{ source: { principals: ['cluster.local/ns/app/sa/sleep'] } }] }],
  }));
  const overridden = await eventually(() => ask(sleep, productpage.ip, 9080, 's2'), (a) => !a.ok, 6000);
  t.false(overridden.ok, 'DENY wins over ALLOW');
});

netnsTest.serial('a policy change closes an open connection that it now denies; dry-run only logs', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  const { productpage, sleep } = await bookinfo(tb);
  void productpage.spawn('ncat', ['-l', '-k', '9090', '--sh-exec', 'cat']).catch(() => undefined);
  await productpage.waitForPort(9090);

  await tb.writeWorkload('authz-dry.yaml', policy('dry-deny-sleep', {
    selector: { matchLabels: { app: 'productpage' } }, action: 'DENY', rules: [{}],
  }, { 'istio.io/dry-run': 'true' }));
  // Wait until the agent has the dry-run policy (it logs a would-deny), then check it did not deny.
  const dryLogged = async (): Promise<boolean> => {
    await ask(sleep, productpage.ip, 9080, 'dry');
    return (await tb.agent(1).logs({ currentRun: true })).some((l) => l.msg === 'dry-run policy would deny this connection');
  };
  t.true(await eventually(dryLogged, (seen) => seen, 6000), 'the dry-run policy logged what it would deny');
  t.true((await ask(sleep, productpage.ip, 9080, 'dry2')).ok, 'and did not deny it');

  // A long-lived connection: the client holds it open for 30 s unless something closes it.
  void sleep.spawn('sh', ['-c', `(echo hello; sleep 30) | ncat ${productpage.ip} 9090`], { reject: false, timeout: 40_000 });
  const open = await eventually(async () => ((await agentPod(tb, productpage))?.stats?.active ?? 0), (n) => n >= 1, 5000);
  t.is(open, 1, 'the connection is open');

  await tb.writeWorkload('authz-deny-all.yaml', policy('deny-all-to-productpage', {
    selector: { matchLabels: { app: 'productpage' } }, action: 'DENY', rules: [{}],
  }));
  const after = await eventually(async () => (await agentPod(tb, productpage))?.stats, (st) => (st?.active ?? 1) === 0, 10_000);
  t.is(after?.active, 0, 'the open connection was closed by the policy change');
  t.true((after?.inbound.denied ?? 0) >= 1);
  const client = await eventually(async () => (await agentPod(tb, sleep))?.stats?.active ?? 1, (n) => n === 0, 5000);
  t.is(client, 0, 'and torn down on the client side too');
  const logs = await tb.agent(1).logs({ currentRun: true });
  t.true(logs.some((l) => l.msg === 'open connection closed: now denied by authorization policy'));
  t.true(logs.some((l) => l.scope === 'access' && l.msg === 'connection complete' && l.response_flags === 'DENY'
    && /closed after a policy change: denied by DENY policy app\/deny-all-to-productpage/.test(String(l.error))), 'the access log says why it closed');
});

netnsTest.serial('a malformed policy fails closed until fixed: the ALLOW typo refuses everyone, loudly; a malformed PeerAuthentication refuses plaintext', async (t) => {
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('legacy', {});
  const { productpage, sleep, notsleep } = await bookinfo(tb);
  const [outsider] = await tb.addPods([{ node: 0, namespace: 'legacy', name: 'outsider' }]);
  if (!outsider) throw new Error('pods missing');

  // The only ALLOW policy has a typo (`principal:` for `principals:`): nobody gets in, not everybody.
  const typo = policy('productpage-viewer', {
    selector: { matchLabels: { app: 'productpage' } },
    action: 'ALLOW',
    rules: [{ from: [{ source: { principal: ['cluster.local/ns/app/sa/sleep'] } }] }],
  });
  await tb.writeWorkload('authz-allow.yaml', typo);
  const refused = await eventually(() => ask(sleep, productpage.ip, 9080, 's'), (a) => !a.ok, 6000);
  t.false(refused.ok, 'sleep is refused while the policy is malformed');
  t.false((await ask(notsleep, productpage.ip, 9080, 'n')).ok, 'and notsleep too');
  const node1 = cli(tb, 1);
  const status = await node1('status');
  t.is(status.exitCode, 1, status.stdout);
  t.regex(status.stdout, /malformed policies: 1\n {2}MALFORMED AuthorizationPolicy app\/productpage-viewer: spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  const check = await node1('policy', 'check', '--from', 'app/sleep', '--to', 'app/productpage:9080');
  t.is(check.exitCode, 1);
  t.regex(check.stdout, /^DENY /);
  t.regex(check.stdout, /reason: +denied: policy app\/productpage-viewer is malformed \(spec\.rules\[0\]\.from\[0\]\.source\.principal .*\); fix it/);
  t.regex(check.stdout, /applicable: app\/productpage-viewer \(MALFORMED: spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  const metrics = await adminHttp(tb, 1, 'GET', 'http://127.0.0.1:15020/metrics');
  t.regex(metrics.body, /^ambient_node_malformed_policies 1$/m);
  const logs = await tb.agent(1).logs({ currentRun: true });
  t.true(logs.some((l) => l.level === 50 && l.object === 'AuthorizationPolicy app/productpage-viewer' && /principal is not a known field/.test(String(l.error))), 'logged at error, naming the object and field');

  // Fixed: sleep admitted, notsleep refused, the status is clean again.
  await tb.writeWorkload('authz-allow.yaml', allowSleep);
  const admitted = await eventually(() => ask(sleep, productpage.ip, 9080, 's2'), (a) => a.ok, 6000);
  t.true(admitted.ok, 'sleep gets through once the policy is fixed');
  t.false((await ask(notsleep, productpage.ip, 9080, 'n2')).ok, 'notsleep is still refused');
  const clean = await node1('status');
  t.is(clean.exitCode, 0, clean.stdout);
  t.regex(clean.stdout, /malformed policies: 0/);

  // A malformed PeerAuthentication: plaintext from a non-mesh pod is refused (as STRICT) in its scope; mesh passes.
  await tb.removeWorkload('authz-allow.yaml');
  t.true((await eventually(() => ask(outsider, productpage.ip, 9080, 'p'), (a) => a.ok, 6000)).ok, 'plaintext admitted (PERMISSIVE, no policy)');
  await tb.writeWorkload('pa.yaml', {
    apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication',
    metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICTER' } },
  });
  const plain = await eventually(() => ask(outsider, productpage.ip, 9080, 'p2'), (a) => !a.ok, 6000);
  t.false(plain.ok, 'plaintext refused while the PeerAuthentication is malformed');
  t.true((await ask(sleep, productpage.ip, 9080, 's3')).ok, 'mesh clients still pass');
  const paStatus = await node1('status', '-o', 'json');
  t.is(paStatus.exitCode, 1);
  t.like(JSON.parse(paStatus.stdout), { ready: true, malformedPolicies: 1, malformed: [{ kind: 'PeerAuthentication', policy: 'app/strict' }] });
});
