// How the reflector lists (against the fake API server, which enforces the semantics): from the watch cache at start and
// on a relist after 410, consistent and paginated only when the cache refuses, started over when a continue token expires.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { KubeClient } from '../../agent/src/workload/kube/client.js';
import { LIST_PAGE_SIZE, Reflector, type ReflectorChange } from '../../agent/src/workload/kube/reflector.js';
import { FakeKubeApi, pollUntil, kubeconfigFor, type RecordedRequest } from '../fixtures/fake-kube-api.js';

const quiet = pino({ level: 'silent' });

const until = pollUntil;

const namespace = (i: number): Record<string, unknown> => ({ metadata: { name: `ns${i}`, labels: { i: String(i) } } });

/** A namespaces reflector against a fake API server seeded with `count` namespaces. */
async function setup(t: import('ava').ExecutionContext, count: number): Promise<{ api: FakeKubeApi; reflector: Reflector<string>; lists: () => RecordedRequest[]; changes: ReflectorChange<string>[] }> {
  const api = await new FakeKubeApi().start();
  t.teardown(() => api.stop());
  for (let i = 0; i < count; i++) api.put('namespaces', namespace(i));
  const dir = mkdtempSync(join(tmpdir(), 'kube-lists-test-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'kubeconfig'), kubeconfigFor(api));
  const client = new KubeClient({ kubeconfig: join(dir, 'kubeconfig') });
  await client.init();
  const changes: ReflectorChange<string>[] = [];
  const reflector = new Reflector<string>({
    client, path: '/api/v1/namespaces', convert: (o) => String((o.metadata as { name?: unknown }).name), onChange: (cs) => changes.push(...cs),
    log: quiet, backoff: { initialMs: 20, maxMs: 200 },
  });
  t.teardown(async () => {
    await reflector.stop();
    await client.close();
  });
  await reflector.start();
  await until(() => api.openWatches('namespaces'), (n) => n === 1, 'watch');
  return { api, reflector, changes, lists: () => api.requests.filter((r) => r.path === '/api/v1/namespaces' && r.query.watch === undefined) };
}

test('the initial list is served from the watch cache (resourceVersion=0), not read from etcd', async (t) => {
  const { api, reflector, lists } = await setup(t, 3);
  t.deepEqual(lists().map((r) => r.query), [{ resourceVersion: '0' }]);
  t.deepEqual(api.listReads, { cache: 1, etcd: 0, etcdItems: 0 });
  t.is(reflector.values().length, 3);
});

test('a relist after 410 asks the cache for a state not older than the one it had', async (t) => {
  const { api, reflector, lists } = await setup(t, 3);
  api.put('namespaces', namespace(3));
  await until(() => reflector.values().length, (n) => n === 4, 'watch event');
  const seen = reflector.resourceVersion;
  api.expireWatches();
  api.put('namespaces', namespace(4));
  await until(() => lists().length, (n) => n === 2, 'relist');
  t.deepEqual(lists()[1]?.query, { resourceVersion: seen, resourceVersionMatch: 'NotOlderThan' });
  await until(() => reflector.values().length, (n) => n === 5, 'the namespace made meanwhile');
  t.is(api.listReads.etcd, 0, 'no etcd read');
  t.is(reflector.stats.consistentLists, 0);
});

test('when the cache refuses the relist, the reflector reads from etcd in pages of LIST_PAGE_SIZE', async (t) => {
  const count = LIST_PAGE_SIZE * 2 + 7;
  const { api, reflector, lists, changes } = await setup(t, count);
  api.failNextCachedLists = { status: 504, count: 1 };
  changes.length = 0;
  api.delete('namespaces', 'ns0');
  api.expireWatches();
  await until(() => reflector.stats.consistentLists, (n) => n === 1, 'consistent list');
  await until(() => api.openWatches('namespaces'), (n) => n === 1, 'watch again');
  const pages = lists().slice(2);
  t.is(pages.length, 3);
  t.deepEqual(pages.map((r) => r.query.limit), [String(LIST_PAGE_SIZE), String(LIST_PAGE_SIZE), String(LIST_PAGE_SIZE)]);
  t.is(pages[0]?.query.continue, undefined);
  t.truthy(pages[1]?.query.continue);
  t.true(pages.every((r) => r.query.resourceVersion === undefined));
  t.is(reflector.values().length, count - 1);
  t.is(api.listReads.etcdItems, count - 1);
  t.deepEqual(changes.map((c) => c.key), ['ns0'], 'only the deleted namespace is announced');
});

test('an expired continue token (410) starts the paginated list over from the first page', async (t) => {
  const count = LIST_PAGE_SIZE + 1;
  const { api, reflector, lists } = await setup(t, count);
  let expired = false;
  api.beforeList = (_r, q) => {
    if (q.continue !== undefined && !expired) {
      expired = true;
      api.expireContinueTokens();
    }
  };
  api.failNextCachedLists = { status: 410, count: 1 };
  api.put('namespaces', namespace(count));
  api.expireWatches();
  await until(() => reflector.stats.consistentLists, (n) => n === 2, 'paginated list started over');
  await until(() => reflector.stats.lists, (n) => n === 2, 'the relist done');
  t.is(reflector.values().length, count + 1);
  const pages = lists().slice(2).map((r) => (r.query.continue === undefined ? 'first' : 'next'));
  t.deepEqual(pages, ['first', 'next', 'first', 'next']);
});
