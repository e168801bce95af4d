// The plugin's commands on one attachment: ADD (enrol or record as skipped), DEL, CHECK, and GC of the attachments
// the runtime no longer has. ADD opens the pod's network namespace once and works through that handle; DEL and GC run
// nothing in the pod (its rules die with its namespace).
import { AgentError } from '../errors.js';
import { Netns, NetnsGoneError } from '../platform/netns.js';
import { netnsAddresses } from '../platform/proc-netns.js';
import { normalizeIp } from '../protocol/address.js';
import type { CniEvent, EventVerdict, GcEvent } from '../protocol/cni-event.js';
import { recordKey, type PodRecord } from '../registry/state-store.js';
import { decideEnrolment } from '../workload/enrolment.js';
import { sameSandbox, type Attachments } from './attachments.js';
import { dropDiscovered } from './late-enrolment.js';

export async function cniAdd(a: Attachments, ev: CniEvent): Promise<EventVerdict> {
  const { podNamespace: ns, podName: name } = ev.k8s;
  if (!ns || !name) throw new AgentError('AMB_ERR_BAD_EVENT', 'ADD without K8S_POD_NAMESPACE/K8S_POD_NAME: not a Kubernetes pod');
  const key = recordKey(ev.containerId, ev.ifname);
  const plog = a.log.child({ pod: `${ns}/${name}`, containerId: ev.containerId.slice(0, 12) });
  return a.mutex.run(key, async () => {
    const pod = await a.source.waitForPod(ns, name, a.podLookupTimeoutMs);
    if (!pod) {
      throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${ns}/${name} is not in the workload source yet; try again later`);
    }
    if (ev.k8s.podUid && pod.uid && ev.k8s.podUid !== pod.uid) {
      throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${ns}/${name} has uid ${pod.uid} in the workload source but the runtime sent ${ev.k8s.podUid}; try again later`);
    }
    const netns = openEventNetns(ev.netns, `${ns}/${name}`);
    try {
      const ips = ev.ips.length ? eventIps(ev) : await podIpsFromNetns(netns);
      const decision = decideEnrolment(pod, a.source.getNamespace(ns));
      await dropDiscovered(a, ns, name);
      const prev = a.records.get(key);
      if (prev && !sameSandbox(prev, netns.id)) {
        // Same attachment, new sandbox namespace: forget the old one before enrolling the new.
        await a.unenrol(key, plog);
        a.records.delete(key);
      }
      const rec: PodRecord = {
        containerId: ev.containerId, ifname: ev.ifname, netnsPath: ev.netns, netnsInode: netns.id.inode, netnsDev: netns.id.dev,
        namespace: ns, name, uid: pod.uid || ev.k8s.podUid || '', serviceAccount: pod.serviceAccount, ips, state: decision.enrol ? 'enrolled' : 'skipped',
        reason: decision.reason, backend: a.backend.name, updatedAt: new Date().toISOString(),
      };
      // A namespace a DEL left rules in (the runtime re-uses a sandbox): cleared when the pod is skipped now, else read
      // and replaced by the install (never written blind: iptables would get a second jump), and kept if that fails (the
      // sandbox's app may be running: its TCP stays refused, never in clear). Fresh: nothing of ours can be in the
      // namespace yet, no left rules and no listener of another attachment in it.
      const left = a.leftRules.has(netns.id, ev.containerId);
      await a.clearLeftRules(netns, rec, decision.enrol);
      const fresh = !a.records.has(key) && !left && !a.listensIn(netns.id);
      if (decision.enrol) await a.enrol(key, rec, plog, { fresh, netns, keepRulesOnFailure: left });
      else {
        await a.unenrol(key, plog, { eventNs: netns });
        plog.info({ reason: decision.reason }, 'pod not selected for the mesh');
      }
      a.leftRules.forget(netns.id);
      a.records.set(key, rec);
      a.runtimeDeletes.forget(rec.uid);
      await a.persist();
      a.report(rec);
      return { result: decision.enrol ? 'enrolled' : 'skipped', reason: decision.reason };
    } finally {
      a.release(key, netns);
    }
  });
}

/**
 * Releases the attachment: listeners, forwarder, probe targets, record (persisted), identity. The in-pod rules are left
 * to die with the namespace the runtime is deleting (Attachments.unenrol says why that fails closed meanwhile).
 */
export async function cniDel(a: Attachments, ev: CniEvent): Promise<EventVerdict> {
  const key = recordKey(ev.containerId, ev.ifname);
  return a.mutex.run(key, async () => {
    const rec = a.records.get(key);
    if (!rec) return { result: 'removed', reason: 'attachment not known' };
    await a.unenrol(key, a.log.child({ pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId.slice(0, 12) }), { podRules: 'leave' });
    a.records.delete(key);
    // Another attachment of the pod still recorded (a new sandbox's ADD came before this DEL of the old one): not left alone.
    if (!a.holdsUid(rec.uid)) a.runtimeDeletes.note(rec.uid, rec.ips);
    await a.persist();
    return { result: 'removed' };
  });
}

export async function cniCheck(a: Attachments, ev: CniEvent): Promise<EventVerdict> {
  const key = recordKey(ev.containerId, ev.ifname);
  return a.mutex.run(key, async () => {
    const rec = a.records.get(key);
    const { podNamespace: ns, podName: name } = ev.k8s;
    const pod = ns && name ? a.source.getPod(ns, name) : undefined;
    const shouldEnrol = pod ? decideEnrolment(pod, a.source.getNamespace(pod.namespace)).enrol : rec?.state === 'enrolled';
    if (!shouldEnrol) return { result: 'ok', reason: 'pod is not selected for the mesh' };
    if (!rec || rec.state !== 'enrolled') throw new AgentError('AMB_ERR_NOT_ENROLLED', `pod ${ns}/${name} should be enrolled but the agent has not enrolled it`);
    const problems = await a.inspect(key, rec);
    if (problems.length) throw new AgentError('AMB_ERR_NOT_ENROLLED', `pod ${rec.namespace}/${rec.name} is not fully captured: ${problems.join('; ')}`);
    return { result: 'ok' };
  });
}

export async function cniGc(a: Attachments, ev: GcEvent): Promise<EventVerdict> {
  const valid = new Set(ev.validAttachments.map((x) => recordKey(x.containerId, x.ifname)));
  let removed = 0;
  for (const key of [...a.records.keys()]) {
    if (valid.has(key)) continue;
    const rec = a.records.get(key);
    if (!rec || rec.origin === 'proc') continue; // not an attachment the runtime made through us
    await cniDel(a, { command: 'DEL', cniVersion: ev.cniVersion, containerId: rec.containerId, ifname: rec.ifname, netns: '', args: '', k8s: {}, ips: [], network: ev.network });
    removed++;
  }
  if (removed) a.log.info({ removed }, 'garbage-collected attachments the runtime no longer has');
  return { result: 'ok', removed };
}

/**
 * The event's namespace, opened once for the whole event. A path that names no namespace is AMB_ERR_NETNS_GONE; the
 * agent's own namespace is refused as an enrolment failure.
 */
function openEventNetns(path: string, pod: string): Netns {
  try {
    return Netns.open(path);
  } catch (err) {
    if (err instanceof NetnsGoneError) throw new AgentError('AMB_ERR_NETNS_GONE', `network namespace ${path} of pod ${pod} does not exist (or is not a network namespace)`);
    throw new AgentError('AMB_ERR_ENROL_FAILED', `enrolling pod ${pod} failed`, { cause: err });
  }
}

/**
 * The pod's global addresses, read from its namespace (an ADD without prevResult IPs), IPv4 and IPv6, canonical; which
 * of them are captured is the backend's to say (capture-families.ts).
 */
async function podIpsFromNetns(netns: Netns): Promise<string[]> {
  return uniqueCanonical(await netnsAddresses(netns.toolPath));
}

/** The prevResult's addresses (every family the primary CNI gave, e.g. one IPv4 and one IPv6), prefix dropped, canonical. */
export function eventIps(ev: Pick<CniEvent, 'ips'>): string[] {
  return uniqueCanonical(ev.ips.map((ip) => ip.address.split('/')[0] ?? ip.address));
}

function uniqueCanonical(ips: readonly string[]): string[] {
  return [...new Set(ips.map(normalizeIp))];
}
