// Unit tests for the compact workload records (shared strings and label sets, only the kept annotations), the streamed
// list splitter, structural equality, and the files source's safety check under its watch.
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync, type FSWatcher } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { fromK8sObject, POD_ANNOTATIONS_KEPT, type PodInfo } from '../../agent/src/workload/types.js';
import { flat, intern, internMap, InternPool } from '../../agent/src/workload/intern.js';
import { JsonListSplitter } from '../../agent/src/workload/kube/list-splitter.js';
import { REDIRECTION_ANNOTATION } from '../../agent/src/workload/kube/pod-annotator.js';
import { sameValue } from '../../agent/src/workload/same-value.js';
import { FilesWorkloadSource } from '../../agent/src/workload/files-source.js';
import { meshWorkloads } from '../../agent/src/workload/directory.js';
import { pollUntil } from '../fixtures/fake-kube-api.js';

const quiet = pino({ level: 'silent' });

const pod = (i: number, extra: Record<string, string> = {}): PodInfo => {
  const o = fromK8sObject({
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      name: `p${i}`, namespace: ['ns', 'a'].join(''), uid: `u${i}`, labels: { app: ['w', 'eb'].join(''), tier: 'front' },
      annotations: { 'kubectl.kubernetes.io/default-container': 'web', [REDIRECTION_ANNOTATION]: 'enabled', ...extra },
    },
    spec: { nodeName: ['node', '-1'].join(''), serviceAccountName: ['s', 'a'].join('') },
    status: { podIP: `10.0.0.${i}` },
  });
  if (o?.kind !== 'Pod') throw new Error('not a pod');
  return o.pod;
};

test('pods keep shared, frozen label sets and only the annotations the agent reads', (t) => {
  const a = pod(1);
  const b = pod(2);
  t.is(a.labels, b.labels, 'one label set for both pods');
  t.true(Object.isFrozen(a.labels));
  t.deepEqual(a.labels, { app: 'web', tier: 'front' });
  t.deepEqual(a.annotations, { [REDIRECTION_ANNOTATION]: 'enabled' });
  t.deepEqual(POD_ANNOTATIONS_KEPT, [REDIRECTION_ANNOTATION]);
  t.is(a.annotations, b.annotations);
  t.deepEqual(a.podIPs, ['10.0.0.1']);
  // A malformed annotation the agent does not keep is still refused (the object is malformed).
  t.throws(() => fromK8sObject({ kind: 'Pod', metadata: { name: 'x', annotations: { other: 1 } } }), { message: /annotations\.other must be a string/ });
  const [wa] = meshWorkloads(a, { name: 'nsa', labels: { 'istio.io/dataplane-mode': 'ambient' } }, 'cluster.local');
  const [wb] = meshWorkloads(b, { name: 'nsa', labels: { 'istio.io/dataplane-mode': 'ambient' } }, 'cluster.local');
  t.is(wa?.identity, 'spiffe://cluster.local/ns/nsa/sa/sa');
  t.is(wa?.identity, wb?.identity);
});

test('intern pools return the first copy and start over when full', (t) => {
  t.is(intern(['x', 'y'].join('')), 'xy');
  t.is(flat(`${'a'.repeat(20)}${String(Math.random() > 2)}`), `${'a'.repeat(20)}false`);
  t.is(internMap({}), internMap({}));
  t.not(internMap({ a: '1', b: '2' }), internMap({ b: '2', a: '1' }), 'key order is part of a set (both are right)');
  const pool = new InternPool<string, { v: string }>(2);
  const first = pool.get('a', () => ({ v: 'a' }));
  t.is(pool.get('a', () => ({ v: 'other' })), first);
  pool.get('b', () => ({ v: 'b' }));
  pool.get('c', () => ({ v: 'c' }));
  t.is(pool.size, 1, 'cleared when full');
});

test('the list splitter yields each item as its text completes, whatever the chunking', (t) => {
  const items = [
    { metadata: { name: 'a', labels: { x: '}{][' } } },
    { metadata: { name: 'b\\"{', annotations: { y: 'say "hi" \\' } }, spec: { list: [1, [2, { z: null }]] } },
    { metadata: { name: 'ü ☃' } },
  ];
  const body = JSON.stringify({ kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '42', continue: 'c[' }, items, trailer: { items: [1] } });
  for (const size of [1, 2, 3, 7, 64, body.length]) {
    const splitter = new JsonListSplitter();
    const got: unknown[] = [];
    for (let i = 0; i < body.length; i += size) for (const text of splitter.push(body.slice(i, i + size))) got.push(JSON.parse(text));
    t.deepEqual(got, items, `chunks of ${size}`);
    t.deepEqual(JSON.parse(splitter.rest()), { kind: 'PodList', apiVersion: 'v1', metadata: { resourceVersion: '42', continue: 'c[' }, items: [], trailer: { items: [1] } });
  }
  const pretty = new JsonListSplitter();
  const text = JSON.stringify({ metadata: {}, items: [{ a: 1 }, 'skipped', { b: 2 }] }, null, 2);
  t.deepEqual(pretty.push(text).map((s) => JSON.parse(s) as unknown), [{ a: 1 }, { b: 2 }]);
  t.deepEqual(JSON.parse(pretty.rest()), { metadata: {}, items: [] });
});

test('sameValue compares as JSON would, Maps and Sets by entries', (t) => {
  t.true(sameValue({ a: 1, b: [1, { c: 'x' }] }, { b: [1, { c: 'x' }], a: 1 }));
  t.true(sameValue({ a: 1, u: undefined }, { a: 1 }));
  t.true(sameValue(undefined, undefined));
  t.false(sameValue(undefined, {}));
  t.false(sameValue({ a: [1, 2] }, { a: [2, 1] }));
  t.false(sameValue({ a: 1 }, { a: '1' }));
  t.false(sameValue([1], { 0: 1 }));
  t.true(sameValue(new Map([['k', { v: 1 }]]), new Map([['k', { v: 1 }]])));
  t.false(sameValue(new Map([['k', 1]]), new Map([['k', 2]])), 'JSON.stringify would call these equal');
  t.true(sameValue(new Set(['a']), new Set(['a'])));
  t.false(sameValue(new Set(['a']), new Set(['b'])));
});

test('files source: with its watch deaf, a new file is seen by the directory check and an in-place edit by the full scan', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-wl-safety-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const podYaml = (name: string, ip: string): string => `kind: Pod\nmetadata: {name: ${name}, namespace: app}\nstatus: {podIP: ${ip}}\n`;
  writeFileSync(join(dir, 'a.yaml'), podYaml('a', '10.0.0.1'));
  const src = new FilesWorkloadSource(dir, quiet, 50, 400);
  await src.start();
  t.teardown(() => src.stop());
  // A missed event: the watch stops reporting (it stays in place, so the safety check keeps its light mode).
  (src as unknown as { watcher: FSWatcher }).watcher.removeAllListeners('change');
  const scans = src.stats.rescans;
  writeFileSync(join(dir, 'b.yaml'), podYaml('b', '10.0.0.2'));
  await pollUntil(() => src.getPod('app', 'b')?.podIPs[0], (ip) => ip === '10.0.0.2', 'new file applied');
  writeFileSync(join(dir, 'a.yaml'), podYaml('a', '10.0.0.9'));
  await pollUntil(() => src.getPod('app', 'a')?.podIPs[0], (ip) => ip === '10.0.0.9', 'in-place edit applied');
  // Figures, not asserted: how many full rescans the light checks left out.
  t.log(`full rescans while deaf: ${src.stats.rescans - scans}`);
  t.pass();
});
