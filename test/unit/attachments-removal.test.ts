// Which in-pod rules an attachment removes: a failed enrolment rolls back a new pod's but never an enrolled pod's (its
// traffic stays captured), the removal after a switch of --redirect covers the record's and the running backend, DEL
// removes none (they die with the namespace) and an ADD into a namespace a DEL left rules in reads them (not fresh).
// What a pod's record keeps of its rules' proof (rulesSeen) through the repair loop.
// No root: the "pod" namespace is the test's own (opened by its /proc path), the backend and the remover are fakes.
import { statSync } from 'node:fs';
import test from 'ava';
import pino from 'pino';
import type { RedirectMode } from '../../agent/src/config.js';
import type { MeshContext } from '../../agent/src/forwarder/pod-forwarder.js';
import { Netns } from '../../agent/src/platform/netns.js';
import type { CniEvent } from '../../agent/src/protocol/cni-event.js';
import { Attachments, ownBackends, type PodRuleRemover } from '../../agent/src/reconcile/attachments.js';
import { cniAdd, cniDel, cniGc } from '../../agent/src/reconcile/cni-commands.js';
import { repairOne } from '../../agent/src/reconcile/adoption.js';
import type { RedirectBackend, RuleDrift, RulesSeen } from '../../agent/src/redirect/types.js';
import type { PodRecord, StateStore } from '../../agent/src/registry/state-store.js';
import type { WorkloadSource } from '../../agent/src/workload/source.js';
import type { PodInfo } from '../../agent/src/workload/types.js';

const SELF = '/proc/thread-self/ns/net';

function record(backend: string): PodRecord {
  const st = statSync(SELF);
  return {
    containerId: 'c0ffee', ifname: 'eth0', netnsPath: SELF, netnsInode: st.ino, netnsDev: st.dev, namespace: 'ns', name: 'pod',
    uid: 'uid-1', ips: ['10.244.0.5'], state: 'enrolled', reason: 'test', backend, updatedAt: new Date(0).toISOString(),
  };
}

/**
 * A backend whose pod install fails (so no listener is ever opened here); records the `fresh` of each install and the
 * probe targets removed.
 */
function failingBackend(name: RedirectMode): { backend: RedirectBackend; removedProbes: string[]; fresh: (boolean | undefined)[] } {
  const removedProbes: string[] = [];
  const fresh: (boolean | undefined)[] = [];
  const no = (): Promise<never> => Promise.reject(new Error('not used here'));
  const backend: RedirectBackend = {
    name, captureFamilies: ['ipv4'], appMark: 0x539, prepare: async () => undefined,
    installPod: (_ns, _pod, opts) => {
      fresh.push(opts?.fresh);
      return Promise.reject(new Error('iptables-restore: another app holds the xtables lock'));
    },
    verifyPod: no, expectedPodRules: () => [], installHost: async () => undefined, verifyHost: no,
    addProbeTarget: async () => undefined, removeProbeTarget: async (ip) => { removedProbes.push(ip); }, probeTargets: async () => new Set(), removeHost: async () => undefined,
  };
  return { backend, removedProbes, fresh };
}

const POD: PodInfo = {
  namespace: 'ns', name: 'pod', uid: 'uid-1', labels: {}, annotations: {}, nodeName: 'node', serviceAccount: 'default', hostNetwork: false, podIPs: ['10.244.0.5'],
};

/** Attachments over fakes; `selected` is whether the pod's namespace selects ambient mode (ADD enrols it). */
function attachments(backend: RedirectBackend, remover: PodRuleRemover, selected = true, saves: PodRecord[][] = []): Attachments {
  const mesh = { trustDomain: 'cluster.local', identities: { retain: () => undefined } } as unknown as MeshContext;
  const source = {
    waitForPod: async () => POD,
    getPod: () => POD,
    getNamespace: (name: string) => ({ name, labels: selected ? { 'istio.io/dataplane-mode': 'ambient' } : {} }),
  } as unknown as WorkloadSource;
  const store = { save: async (records: PodRecord[]) => { saves.push(records); } } as unknown as StateStore;
  return new Attachments(backend, source, store, pino({ level: 'silent' }), 1000, mesh, undefined, remover);
}

const KEY = 'c0ffee/eth0';

function event(command: 'ADD' | 'DEL'): CniEvent {
  return {
    command, cniVersion: '1.0.0', containerId: 'c0ffee', netns: command === 'ADD' ? SELF : '', ifname: 'eth0', args: '',
    k8s: { podNamespace: 'ns', podName: 'pod', podUid: 'uid-1' }, ips: [{ address: '10.244.0.5/24' }], network: 'test',
  };
}

const selfId = (): { inode: number; dev: number } => {
  const st = statSync(SELF);
  return { inode: st.ino, dev: st.dev };
};

async function failEnrol(enrolled: boolean): Promise<{ removals: RedirectMode[]; removedProbes: string[] }> {
  const { backend, removedProbes } = failingBackend('nftables');
  const removals: RedirectMode[] = [];
  const a = attachments(backend, async (_ns, _rec, running) => { removals.push(running); });
  const netns = Netns.open(SELF);
  try {
    await a.enrol(KEY, record('nftables'), pino({ level: 'silent' }), { netns, enrolled });
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

/** A fake remover noting the record backend and the running one of each removal. */
function removalLog(): { removals: string[]; remover: PodRuleRemover } {
  const removals: string[] = [];
  return { removals, remover: async (_ns, rec, running) => { removals.push(`${rec.backend}+${running}`); } };
}

for (const via of ['DEL', 'GC'] as const) {
  test(`${via} removes no in-pod rule, releases the probe targets and the record, and remembers the namespace`, async (t) => {
    const { backend, removedProbes } = failingBackend('iptables');
    const { removals, remover } = removalLog();
    const a = attachments(backend, remover);
    a.records.set(KEY, record('iptables'));
    if (via === 'DEL') t.like(await cniDel(a, event('DEL')), { result: 'removed' });
    else t.like(await cniGc(a, { cniVersion: '1.1.0', network: 'test', validAttachments: [] }), { removed: 1 });
    t.deepEqual(removals, [], 'nothing is run in the pod');
    t.deepEqual(removedProbes, ['10.244.0.5'], 'the node\'s probe target is released');
    t.false(a.records.has(KEY));
    t.is(a.counters.unenrolments, 1);
    t.deepEqual(a.leftRules.get(selfId(), 'c0ffee'), { containerId: 'c0ffee', backend: 'iptables', ifname: 'eth0' });
  });
}

test('un-enrolment of a running pod still removes its in-pod rules', async (t) => {
  const { backend, removedProbes } = failingBackend('iptables');
  const { removals, remover } = removalLog();
  const a = attachments(backend, remover);
  a.records.set(KEY, record('iptables'));
  await a.unenrol(KEY, pino({ level: 'silent' }));
  t.deepEqual(removals, ['iptables+iptables']);
  t.deepEqual(removedProbes, ['10.244.0.5']);
  t.false(a.leftRules.has(selfId(), 'c0ffee'));
});

test('an ADD into a namespace a DEL left rules in reads them (not fresh); into an unknown one it is fresh', async (t) => {
  const { backend, fresh } = failingBackend('iptables');
  const a = attachments(backend, removalLog().remover);
  await t.throwsAsync(cniAdd(a, event('ADD')), { message: /enrolling pod ns\/pod failed/ });
  const { removals, remover } = removalLog();
  const b = attachments(backend, remover);
  b.leftRules.remember(selfId(), { containerId: 'c0ffee', backend: 'iptables', ifname: 'eth0' });
  await t.throwsAsync(cniAdd(b, event('ADD')), { message: /enrolling pod ns\/pod failed/ });
  t.deepEqual(fresh, [true, false]);
  t.deepEqual(removals, [], 'the failed ADD keeps the rules the DEL left: the sandbox\'s app may run, its TCP stays refused');
  t.true(b.leftRules.has(selfId(), 'c0ffee'), 'kept while no ADD has taken the namespace over');
});

test('a new sandbox whose namespace got the inode of one a DEL left rules in is fresh (the sandbox id differs)', async (t) => {
  const { backend, fresh } = failingBackend('iptables');
  const a = attachments(backend, removalLog().remover);
  a.leftRules.remember(selfId(), { containerId: 'an-older-sandbox', backend: 'iptables', ifname: 'eth0' });
  await t.throwsAsync(cniAdd(a, event('ADD')), { message: /enrolling pod ns\/pod failed/ });
  t.deepEqual(fresh, [true]);
});

test('an ADD of a pod not selected any more into such a namespace removes what the DEL left', async (t) => {
  const { backend } = failingBackend('iptables');
  const { removals, remover } = removalLog();
  const a = attachments(backend, remover, false);
  a.leftRules.remember(selfId(), { containerId: 'c0ffee', backend: 'nftables', ifname: 'eth0' });
  t.like(await cniAdd(a, event('ADD')), { result: 'skipped' });
  t.deepEqual(removals, ['nftables+iptables'], 'the left backend\'s pieces, and the running one\'s');
  t.false(a.leftRules.has(selfId(), 'c0ffee'));
});

test('an ADD into a namespace another backend left rules in removes them first, then installs', async (t) => {
  const { backend, fresh } = failingBackend('iptables');
  const { removals, remover } = removalLog();
  const a = attachments(backend, remover);
  a.leftRules.remember(selfId(), { containerId: 'c0ffee', backend: 'nftables', ifname: 'eth0' });
  await t.throwsAsync(cniAdd(a, event('ADD')));
  t.deepEqual(removals, ['nftables+iptables'], 'removed first; the failed install then keeps whatever it put in (never rolled back to nothing)');
  t.deepEqual(fresh, [false], 'read before writing: the namespace held our rules');
});

test('a pod\'s proof of its rules: taken from a read-back and given to the repair\'s install, dropped by a drift, written once soon after', async (t) => {
  const seen: RulesSeen = { gen: 5, netnsCookie: 'boot/1', digest: 'd' };
  let drift: RuleDrift = { ok: true, missing: [], unexpected: [], actual: [], seen };
  const given: (RulesSeen | undefined)[] = [];
  const backend: RedirectBackend = {
    ...failingBackend('iptables').backend,
    verifyPod: async () => drift,
    installPod: async (_ns, _pod, opts) => {
      given.push(opts?.seen);
      throw new Error('iptables-restore: another app holds the xtables lock'); // no listener opens: each pass repairs
    },
  };
  const saves: PodRecord[][] = [];
  const a = attachments(backend, removalLog().remover, true, saves);
  a.records.set(KEY, record('iptables'));
  await repairOne(a, KEY);
  t.deepEqual(given, [seen], 'the rules read back exact: the install may skip them');
  t.deepEqual(a.records.get(KEY)?.rulesSeen, seen);
  await repairOne(a, KEY);
  t.deepEqual(given, [seen, seen]);
  drift = { ok: false, missing: ['-A AMBIENT_OUTPUT -p tcp -j REDIRECT --to-ports 15001'], unexpected: [], actual: [] };
  await repairOne(a, KEY);
  t.deepEqual(given, [seen, seen, undefined], 'a drift disproves the record: the repair reads and writes in full');
  t.is(a.records.get(KEY)?.rulesSeen, undefined);
  t.is(saves.length, 0, 'not written at once');
  await new Promise((resolve) => setTimeout(resolve, 1300));
  t.is(saves.length, 1, 'one write for the new proof, none for losing it');
});
