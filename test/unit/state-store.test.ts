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
