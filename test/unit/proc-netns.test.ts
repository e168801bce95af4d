// Pure parts of late enrolment: pod UIDs from kubelet's cgroup paths (cgroupfs and systemd drivers), process start
// times, and which pods on this node still need their running netns found.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { podUidFromCgroup, startTimeFromStat } from '../../agent/src/platform/proc-netns.js';
import type { Enroller } from '../../agent/src/reconcile/enroller.js';
import { podsToDiscover, RunningPods } from '../../agent/src/reconcile/running-pods.js';
import { RuntimeDeletes } from '../../agent/src/reconcile/runtime-deletes.js';
import type { WorkloadSource } from '../../agent/src/workload/source.js';
import type { NamespaceInfo, PodInfo } from '../../agent/src/workload/types.js';
import { pollUntil } from '../fixtures/fake-kube-api.js';

const UID = '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0';
const cases: [string, string, string | undefined][] = [
  ['cgroupfs, besteffort', `0::/kubepods/besteffort/pod${UID}/3f4e5d6c7b8a`, UID],
  ['cgroupfs, guaranteed', `0::/kubepods/pod${UID}/3f4e5d6c7b8a`, UID],
  ['systemd, burstable', `0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod${UID.replaceAll('-', '_')}.slice/cri-containerd-ab12.scope`, UID],
  ['systemd, guaranteed', `0::/kubepods.slice/kubepods-pod${UID.replaceAll('-', '_')}.slice/crio-ab12.scope`, UID],
  ['cgroup v1 lines, memory hierarchy', `12:pids:/\n4:memory:/kubepods/burstable/pod${UID}/c0ffee\n0::/`, UID],
  ['nested under a prefix (kind, test cgroups)', `0::/ambient-tb-1a2b/kubepods/besteffort/pod${UID}`, UID],
  ['a system service', '0::/system.slice/containerd.service', undefined],
  ['pod-looking name outside kubepods', `0::/user.slice/pod${UID}`, undefined],
  ['kubepods without a pod', '0::/kubepods/besteffort', undefined],
  ['truncated uid', '0::/kubepods/besteffort/pod0f1e2d3c-4b5a', undefined],
];
for (const [name, text, want] of cases) {
  test(`pod UID from cgroup: ${name}`, (t) => t.is(podUidFromCgroup(text), want));
}

test('start time is field 22 of /proc/<pid>/stat, even when the command has spaces and parentheses', (t) => {
  const fields = Array.from({ length: 50 }, (_, i) => String(i + 3)); // field 3 onwards
  t.is(startTimeFromStat(`1234 (sleep (x) y) ${fields.join(' ')}`), 22);
});

const pod = (name: string, o: Partial<PodInfo> = {}): PodInfo => ({
  namespace: 'app', name, uid: `uid-${name}`, labels: {}, annotations: {}, nodeName: 'n0', serviceAccount: 'default', hostNetwork: false, podIPs: ['10.0.0.1'], ...o,
});

test('podsToDiscover: selected pods on this node with an IP that the enroller does not know', (t) => {
  const pods = [
    pod('new'), pod('known'), pod('elsewhere', { nodeName: 'n1' }), pod('no-ip', { podIPs: [] }), pod('host', { hostNetwork: true }),
    pod('opted-out', { labels: { 'istio.io/dataplane-mode': 'none' } }), pod('dying', { terminating: true }),
  ];
  const ns: NamespaceInfo = { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } };
  const source = { pods: () => pods, getNamespace: (n: string) => (n === 'app' ? ns : undefined) };
  t.deepEqual(podsToDiscover(source, 'n0', (p) => p.name === 'known').map((p) => p.name), ['new']);
  const plain = { pods: () => pods, getNamespace: () => ({ name: 'app', labels: {} }) };
  t.deepEqual(podsToDiscover(plain, 'n0', () => false), []);
});

test('RuntimeDeletes: a DEL leaves a pod alone while it is listed with the deleted sandbox\'s addresses, until its ADD or the time-to-live', (t) => {
  const d = new RuntimeDeletes(1000, 2);
  const p = (uid: string, podIPs: string[]) => ({ uid, podIPs });
  d.note('u1', ['10.0.0.1', 'fd00::1'], 0);
  t.is(d.leftAloneUntil(p('u1', ['10.0.0.1', 'fd00::1']), 999), 1000);
  t.is(d.leftAloneUntil(p('u1', ['10.0.0.1']), 999), 1000, 'one of the addresses listed so far');
  t.is(d.leftAloneUntil(p('u1', ['10.0.0.9']), 999), undefined, 'a new sandbox with a new address is looked for');
  t.is(d.leftAloneUntil(p('u1', []), 999), undefined);
  t.is(d.leftAloneUntil(p('u1', ['10.0.0.1']), 1000), undefined, 'expired');
  t.is(d.size, 0, 'an expired entry is dropped when read');
  d.note('u2', ['10.0.0.2'], 0);
  d.forget('u2');
  t.is(d.leftAloneUntil(p('u2', ['10.0.0.2']), 1), undefined, 'an ADD came');
  for (const uid of ['a', 'b', 'c']) d.note(uid, ['10.0.0.3'], 0);
  t.deepEqual(['a', 'b', 'c'].map((uid) => d.leftAloneUntil(p(uid, ['10.0.0.3']), 1)), [undefined, 1000, 1000], 'the oldest goes past the bound');
  d.note('', ['10.0.0.4'], 0);
  d.note('u5', [], 0);
  t.is(d.size, 2, 'a record without a uid or addresses is not remembered');
});

test('late enrolment leaves a DELeted pod alone, then looks for it when that ends, with no other change to wake it', async (t) => {
  const procRoot = mkdtempSync(join(tmpdir(), 'amb-proc-'));
  t.teardown(() => rmSync(procRoot, { recursive: true, force: true }));
  const ns: NamespaceInfo = { name: 'app', labels: { 'istio.io/dataplane-mode': 'ambient' } };
  const looked: string[] = [];
  const source = {
    pods: () => [pod('gone')], getNamespace: () => ns, onChange: () => undefined,
    reportCapture: (p: PodInfo, state: string | undefined) => looked.push(`${p.name} ${state}`),
  } as unknown as WorkloadSource;
  const until = Date.now() + 300;
  const enroller = {
    knows: () => false,
    leftAloneUntil: () => (Date.now() < until ? until : undefined),
    enrolDiscovered: () => Promise.reject(new Error('not expected')),
  } as unknown as Enroller;
  const rp = new RunningPods(source, enroller, { nodeName: 'n0', procRoot, log: pino({ level: 'silent' }), retryMs: 60_000 });
  t.teardown(() => rp.stop());
  rp.start();
  await new Promise((r) => setImmediate(r));
  t.deepEqual(looked, [], 'left alone');
  await pollUntil(() => looked.length, (n) => n > 0, 'the pass when it ends');
  t.deepEqual(looked, ['gone pending'], 'looked for (no process holds its address here)');
});
