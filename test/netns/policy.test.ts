// AuthorizationPolicy end to end: the seeds' scenario (only sleep may reach productpage), DENY over ALLOW, a policy
// change closing an open connection it now denies, and dry-run policies that only log.
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { agentPod, ask, bookinfo, eventually } from './helpers.js';

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
