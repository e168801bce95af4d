// Late (un)enrolment of running pods: those found through /proc (no CNI ADD), and those whose own or namespace labels
// change; also the forwarders' re-evaluation of open connections when policies change.
import { describe } from '../errors.js';
import { recordKey, type PodRecord } from '../registry/state-store.js';
import { decideEnrolment } from '../workload/enrolment.js';
import type { WorkloadChange } from '../workload/source.js';
import type { PodInfo } from '../workload/types.js';
import { CaptureFamilyRefusal, type Attachments } from './attachments.js';

/**
 * Enrols a pod that was already running when it became selected, whose netns was found by scanning /proc (the caller
 * verified that the namespace holds the pod's IP). Throws when enrolment fails; nothing is kept then.
 */
export async function enrolDiscovered(a: Attachments, pod: PodInfo, found: { netnsPath: string; netns: { inode: number; dev: number } }): Promise<void> {
  const key = recordKey(`proc:${pod.uid}`, 'eth0');
  const plog = a.log.child({ pod: `${pod.namespace}/${pod.name}`, podUid: pod.uid, netns: found.netnsPath });
  await a.mutex.run(key, async () => {
    if (a.knows(pod.namespace, pod.name)) return;
    const decision = decideEnrolment(pod, a.source.getNamespace(pod.namespace));
    if (!decision.enrol) return;
    const rec: PodRecord = {
      containerId: `proc:${pod.uid}`, ifname: 'eth0', netnsPath: found.netnsPath, netnsInode: found.netns.inode, netnsDev: found.netns.dev,
      namespace: pod.namespace, name: pod.name, uid: pod.uid, serviceAccount: pod.serviceAccount, ips: pod.podIPs, state: 'enrolled',
      reason: `${decision.reason} (running pod found in /proc)`, backend: a.backend.name, updatedAt: new Date().toISOString(), origin: 'proc',
    };
    await a.enrol(key, rec, plog, { fresh: false });
    a.records.set(key, rec);
    await a.persist();
    a.report(rec);
    plog.info('running pod enrolled late');
  });
}

/** Forgets pods found through /proc once the pod is deleted or the runtime sends an ADD for it (a new sandbox). */
export async function dropDiscovered(a: Attachments, namespace: string, name: string): Promise<void> {
  for (const [key, rec] of [...a.records]) {
    if (rec.origin !== 'proc' || rec.namespace !== namespace || rec.name !== name) continue;
    await a.mutex.run(key, async () => {
      if (a.records.get(key) !== rec) return;
      await a.unenrol(key, a.log.child({ pod: `${namespace}/${name}` }));
      a.records.delete(key);
      await a.persist();
    });
  }
}

/** After a policy change: every open inbound connection is checked again and those now denied are closed. */
export function reevaluatePolicies(a: Attachments, change: WorkloadChange): void {
  if (!change.policies) return;
  let closed = 0;
  for (const live of a.live.values()) closed += live.forwarder.reevaluate();
  if (closed) a.log.info({ closed }, 'policy change closed connections it now denies');
}

/** The workload source's change handler: policy re-evaluation, release of deleted discovered pods, label changes. */
export function onWorkloadChange(a: Attachments, change: WorkloadChange): void {
  reevaluatePolicies(a, change);
  const affected = new Set<string>();
  for (const p of change.pods) if (p.after) affected.add(`${p.after.namespace}/${p.after.name}`);
  for (const p of change.pods) {
    if (p.before && !p.after) {
      dropDiscovered(a, p.before.namespace, p.before.name)
        .catch((err: unknown) => a.log.error({ pod: `${p.before?.namespace}/${p.before?.name}`, error: describe(err) }, 'releasing a pod found through /proc failed'));
    }
  }
  const nsChanged = new Set(change.namespaces.map((n) => (n.after ?? n.before)?.name));
  for (const [key, rec] of a.records) {
    if (!affected.has(`${rec.namespace}/${rec.name}`) && !nsChanged.has(rec.namespace)) continue;
    const pod = a.source.getPod(rec.namespace, rec.name);
    if (pod) void reevaluate(a, key, pod);
  }
}

/** Late (un)enrolment of a running pod whose labels or namespace labels changed. */
function reevaluate(a: Attachments, key: string, pod: PodInfo): Promise<void> {
  return a.mutex.run(key, async () => {
    const rec = a.records.get(key);
    if (!rec) return;
    const decision = decideEnrolment(pod, a.source.getNamespace(pod.namespace));
    const want = decision.enrol ? 'enrolled' : 'skipped';
    if (want === rec.state) return;
    const plog = a.log.child({ pod: `${rec.namespace}/${rec.name}` });
    try {
      if (decision.enrol) await a.enrol(key, rec, plog);
      else await a.unenrol(key, plog);
      rec.state = want;
      rec.reason = decision.reason;
      rec.updatedAt = new Date().toISOString();
      await a.persist();
      a.report(rec);
    } catch (err) {
      if (err instanceof CaptureFamilyRefusal) {
        // Not retried (its addresses will not change), not marked pending; the pod keeps running outside the mesh as it
        // did before it was labelled, and no peer sends it HBONE (the directory lists none of its addresses).
        rec.reason = `refused: ${err.message}`;
        rec.updatedAt = new Date().toISOString();
        a.source.reportCapture?.(rec, undefined);
        await a.persist().catch(() => undefined);
        return;
      }
      plog.error({ error: describe(err) }, 'late enrolment change failed');
      if (decision.enrol) a.source.reportCapture?.(rec, 'pending');
    }
  });
}
