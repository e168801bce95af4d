// Which in-pod rules an attachment removes: a failed enrolment rolls back a new pod's but never an enrolled pod's (its
// traffic stays captured), and the removal after a switch of --redirect covers the record's and the running backend.
// No root: the "pod" namespace is the test's own (opened by its /proc path), the backend and the remover are fakes.
import { statSync } from 'node:fs';
import test from 'ava';
import pino from 'pino';
import type { RedirectMode } from '../../agent/src/config.js';
import type { MeshContext } from '../../agent/src/forwarder/pod-forwarder.js';
import { Netns } from '../../agent/src/platform/netns.js';
import { Attachments, ownBackends, type PodRuleRemover } from '../../agent/src/reconcile/attachments.js';
import type { RedirectBackend } from '../../agent/src/redirect/types.js';
import type { PodRecord, StateStore } from '../../agent/src/registry/state-store.js';
import type { WorkloadSource } from '../../agent/src/workload/source.js';

const SELF = '/proc/thread-self/ns/net';

function record(backend: string): PodRecord {
  const st = statSync(SELF);
  return {
    containerId: 'c0ffee', ifname: 'eth0', netnsPath: SELF, netnsInode: st.ino, netnsDev: st.dev, namespace: 'ns', name: 'pod',
    uid: 'uid-1', ips: ['10.244.0.5'], state: 'enrolled', reason: 'test', backend, updatedAt: new Date(0).toISOString(),
  };
}

/** A backend whose pod install fails; records the probe targets removed. */
function failingBackend(name: RedirectMode): { backend: RedirectBackend; removedProbes: string[] } {
  const removedProbes: string[] = [];
  const no = (): Promise<never> => Promise.reject(new Error('not used here'));
  const backend: RedirectBackend = {
    name, captureFamilies: ['ipv4'], prepare: async () => undefined,
    installPod: () => Promise.reject(new Error('iptables-restore: another app holds the xtables lock')),
    verifyPod: no, expectedPodRules: () => [], installHost: async () => undefined, verifyHost: no,
    addProbeTarget: async () => undefined, removeProbeTarget: async (ip) => { removedProbes.push(ip); }, probeTargets: async () => new Set(), removeHost: async () => undefined,
  };
  return { backend, removedProbes };
}

function attachments(backend: RedirectBackend, remover: PodRuleRemover): Attachments {
  const mesh = { trustDomain: 'cluster.local' } as unknown as MeshContext;
  return new Attachments(backend, {} as unknown as WorkloadSource, {} as unknown as StateStore, pino({ level: 'silent' }), 1000, mesh, undefined, remover);
}

async function failEnrol(enrolled: boolean): Promise<{ removals: RedirectMode[]; removedProbes: string[] }> {
  const { backend, removedProbes } = failingBackend('nftables');
  const removals: RedirectMode[] = [];
  const a = attachments(backend, async (_ns, _rec, running) => { removals.push(running); });
  const netns = Netns.open(SELF);
  try {
    await a.enrol('c0ffee/eth0', record('nftables'), pino({ level: 'silent' }), { netns, enrolled });
    throw new Error('enrol should have failed');
  } catch (err) {
    if ((err as Error).message === 'enrol should have failed') throw err;
  } finally {
    netns.close();
  }
  return { removals, removedProbes };
}

test('a new enrolment that fails is rolled back: its rules and probe targets are removed', async (t) => {
  const r = await failEnrol(false);
  t.deepEqual(r.removals, ['nftables']);
  t.deepEqual(r.removedProbes, ['10.244.0.5']);
});

test('an enrolled pod whose re-adoption or repair fails keeps its rules and probe targets (captured, not bypassed)', async (t) => {
  const r = await failEnrol(true);
  t.deepEqual(r.removals, []);
  t.deepEqual(r.removedProbes, []);
});

test('removal covers the record\'s backend and the running one after a switch; every backend for unknown records', (t) => {
  t.deepEqual(ownBackends({ backend: 'nftables' }, 'nftables'), ['nftables']);
  t.deepEqual(ownBackends({ backend: 'iptables' }, 'nftables'), ['iptables', 'nftables']);
  t.deepEqual(ownBackends({ backend: 'ebpf' }, 'iptables'), ['ebpf', 'iptables']);
  t.is(ownBackends({ backend: '' }, 'iptables'), undefined);
  t.is(ownBackends({ backend: 'ipvs' }, 'ebpf'), undefined);
});
