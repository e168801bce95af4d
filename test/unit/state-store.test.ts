// Unit tests for the agent's pod records on disk: atomic saves, and a failed save not poisoning the later ones.
import test from 'ava';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createRootLogger } from '../../agent/src/log.js';
import { StateStore, type PodRecord } from '../../agent/src/registry/state-store.js';

const rec: PodRecord = {
  containerId: 'c1', ifname: 'eth0', netnsPath: '/run/netns/x', netnsInode: 1, netnsDev: 2, namespace: 'app', name: 'sleep',
  uid: 'u1', ips: ['10.0.0.2'], state: 'enrolled', reason: 'namespace label', backend: 'iptables', updatedAt: '2026-11-22T00:00:00Z',
};

test('a save that failed (here: its temp file path is a directory) does not make every later save fail', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambient-state-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const store = new StateStore(dir, createRootLogger('silent'));
  mkdirSync(join(dir, 'pods.json.tmp'));
  await t.throwsAsync(store.save([rec]));
  rmSync(join(dir, 'pods.json.tmp'), { recursive: true });
  await store.save([rec]);
  t.deepEqual(store.load(), [rec]);
  t.is((JSON.parse(readFileSync(join(dir, 'pods.json'), 'utf8')) as { version: number }).version, 1);
});

test('saves asked for together are coalesced into one write of the newest records, and each resolves once it landed', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ambient-state-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const store = new StateStore(dir, createRootLogger('silent'));
  const rec2: PodRecord = { ...rec, containerId: 'c2', name: 'other' };
  const first = store.save([rec]);
  const second = store.save([rec, rec2]);
  t.is(first, second, 'the second save joins the pending write');
  await first;
  t.deepEqual(store.load(), [rec, rec2]);
  // Once that write has landed, a new save is a new write.
  const third = store.save([rec2]);
  t.not(third, first);
  await third;
  t.deepEqual(store.load(), [rec2]);
  await store.flushed();
});
