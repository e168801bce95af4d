// Adoption and repair: re-adopting persisted pods after a restart, the repair loop's per-pod verify-and-restore, and
// the `ambient-node rules` read-back of one pod's expected and actual rules.
import { AgentError, describe } from '../errors.js';
import { recordKey, type PodRecord } from '../registry/state-store.js';
import { readIp6tablesOwned } from '../redirect/backend.js';
import { sameSeen } from '../redirect/rules-seen.js';
import { openSandbox, podContext, probeIps, type Attachments } from './attachments.js';

/** What `ambient-node rules <pod>` shows for one attachment: the rules expected in its netns, those found, the drift. */
export interface PodRulesReport {
  pod: string;
  containerId: string;
  ifname: string;
  netns: string;
  state: PodRecord['state'];
  backend: string;
  expected: string[];
  actual: string[];
  missing: string[];
  unexpected: string[];
  listening: boolean;
  /**
   * Our rules found in the pod's ip6tables (IPv6), read whatever the backend ([] = none): with iptables they are the
   * IPv6 half of `actual` (they capture IPv6 TCP: carried with --capture-ipv6, else refused); with nftables (the inet table covers IPv6) or ebpf, leftovers.
   */
  ip6tables: string[];
  /** True when the pod is enrolled and its rules and listeners are all in place, or it is not enrolled and has none. */
  ok: boolean;
  /** Set when the rules could not be read (e.g. the netns is gone). */
  error?: string;
}

/**
 * How many pods re-adoption works on at once. Each one execs the backend's tools (save/restore per IP family, ipset):
 * a bound keeps a node with hundreds of pods from forking all of them at once, and pods still go in parallel.
 */
export const ADOPT_CONCURRENCY = 16;

/** Runs `work` on every item, at most `limit` at a time, in order of start; resolves when all have settled. */
export async function forEachBounded<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await work(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(Math.max(1, limit), items.length) }, worker));
}

/**
 * Re-adopts persisted pods after a restart: reopens their netns, repairs rules, re-creates listeners; drops the gone.
 * Pods are adopted in parallel, ADOPT_CONCURRENCY at a time, each under its attachment's lock.
 */
export async function adopt(a: Attachments, saved: PodRecord[], concurrency = ADOPT_CONCURRENCY): Promise<void> {
  const started = performance.now();
  // One read of the node's probe sets instead of an add per pod (one tool exec each); unreadable, every pod adds its own.
  const probeTargets = saved.some((r) => r.state === 'enrolled') ? await a.backend.probeTargets().catch(() => undefined) : undefined;
  await forEachBounded(saved, concurrency, async (rec) => {
    const key = recordKey(rec.containerId, rec.ifname);
    const plog = a.log.child({ pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId.slice(0, 12) });
    const netns = openSandbox(rec);
    if (!netns) {
      plog.info({ netns: rec.netnsPath }, 'pod sandbox gone while the agent was down; dropping it');
      if (rec.state === 'enrolled') for (const ip of probeIps(rec)) await a.backend.removeProbeTarget(ip).catch(() => undefined);
      return;
    }
    try {
      a.records.set(key, rec);
      if (rec.state !== 'enrolled') return;
      await a.mutex.run(key, () => a.enrol(key, rec, plog, { netns, enrolled: true, probeTargets })).catch((err: unknown) => {
        plog.error({ error: describe(err) }, 're-adopting pod failed; its rules stay in place so its traffic is refused, not bypassed');
      });
    } finally {
      a.release(key, netns);
    }
  });
  await a.persist();
  a.log.info({ pods: a.records.size, enrolled: enrolledKeys(a).length, ms: Math.round(performance.now() - started) }, 'adopted pods from the state dir');
}

/** Keys of the enrolled attachments, for the repair loop to walk. */
export function enrolledKeys(a: Attachments): string[] {
  return [...a.records.entries()].filter(([, r]) => r.state === 'enrolled').map(([k]) => k);
}

/** Verifies one enrolled pod's rules and listeners and repairs what drifted; true when it repaired something. */
export async function repairOne(a: Attachments, key: string): Promise<boolean> {
  return a.mutex.run(key, async () => {
    const rec = a.records.get(key);
    if (!rec || rec.state !== 'enrolled') return false;
    const seen = rec.rulesSeen;
    const problems = await a.inspect(key, rec);
    // Rules proved exact at a new generation (the first pass after an install the agent could not prove, or after a
    // change elsewhere in the pod's nf_tables) are written down, so that a restart re-adopts the pod without its tools.
    // A proof lost needs no write: a stale one can never match the namespace's generation again.
    const proved = (): void => {
      if (rec.rulesSeen && !sameSeen(seen, rec.rulesSeen)) a.persistSoon();
    };
    if (!problems.length) {
      proved();
      return false;
    }
    const plog = a.log.child({ pod: `${rec.namespace}/${rec.name}` });
    plog.warn({ problems }, 'pod capture drifted; repairing');
    a.counters.ruleRepairs++;
    await a.enrol(key, rec, plog, { enrolled: true }).catch((err: unknown) => plog.error({ error: describe(err) }, 'repair failed'));
    proved();
    return true;
  });
}

/** Expected vs actual rules for each attachment of pod `namespace/name` (empty when the agent does not know it). */
export async function podRules(a: Attachments, namespace: string, name: string): Promise<PodRulesReport[]> {
  const keys = [...a.records.entries()].filter(([, r]) => r.namespace === namespace && r.name === name).map(([k]) => k);
  return Promise.all(keys.map((key) => a.mutex.run(key, async () => {
    const rec = a.records.get(key);
    if (!rec) throw new AgentError('AMB_ERR_POD_UNKNOWN', `pod ${namespace}/${name} went away`);
    const enrolled = rec.state === 'enrolled';
    const live = a.live.get(key);
    const listening = live?.forwarder.listening ?? false;
    const base = {
      pod: `${rec.namespace}/${rec.name}`, containerId: rec.containerId, ifname: rec.ifname, netns: rec.netnsPath, state: rec.state,
      backend: a.backend.name, expected: enrolled ? a.backend.expectedPodRules(podContext(rec)) : [], listening,
    };
    const sandbox = a.sandbox(rec, { live: live?.netns });
    if (!sandbox) return { ...base, actual: [], missing: base.expected, unexpected: [], ip6tables: [], ok: false, error: `network namespace ${rec.netnsPath} is gone` };
    try {
      const [drift, ip6tables] = await Promise.all([a.backend.verifyPod(sandbox.ns, podContext(rec)), readIp6tablesOwned(sandbox.ns).catch((err: unknown) => [`ip6tables: cannot be read (${describe(err)})`])]);
      // A pod that is not enrolled should have none of our rules: everything found is unexpected.
      const unexpected = enrolled ? drift.unexpected : drift.actual;
      const missing = enrolled ? drift.missing : [];
      return { ...base, ...(enrolled && drift.expected ? { expected: drift.expected } : {}), actual: drift.actual, missing, unexpected, ip6tables, ok: missing.length === 0 && unexpected.length === 0 && (listening || !enrolled) };
    } catch (err) {
      return { ...base, actual: [], missing: [], unexpected: [], ip6tables: [], ok: false, error: `cannot read the rules: ${describe(err)}` };
    } finally {
      sandbox.release();
    }
  })));
}
