// Finds a running pod's network namespace without the CNI plugin's help, by walking /proc (the host's, e.g. /host/proc):
// the process's cgroup path names the pod UID the way kubelet lays it out, and the netns must hold one of the pod's IPs.
// The host's and the agent's own network namespaces are never returned.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runTool } from './exec.js';
import { sameNetns, selfNetns, statNetns, type NetnsId } from './netns.js';
import { sameIp } from '../protocol/address.js';

const UID = '[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}';
/**
 * kubelet's pod cgroups, cgroupfs driver: .../kubepods[/burstable|/besteffort]/pod<uid>/<container>;
 * systemd driver: .../kubepods[-qos].slice/kubepods-<qos>-pod<uid with _>.slice/cri-containerd-<id>.scope.
 */
const POD_CGROUP = new RegExp(`/kubepods(?:[/.-][^\\n]*?)?[/-]pod(${UID})(?:\\.slice)?(?:/|$)`);

/** Pure: the pod UID named by a /proc/<pid>/cgroup file (any hierarchy line), or undefined. */
export function podUidFromCgroup(text: string): string | undefined {
  for (const line of text.split('\n')) {
    const path = line.slice(line.indexOf(':', line.indexOf(':') + 1) + 1);
    const m = POD_CGROUP.exec(path);
    if (m?.[1]) return m[1].replaceAll('_', '-').toLowerCase();
  }
  return undefined;
}

/** Pure: field 22 (starttime, in clock ticks since boot) of a /proc/<pid>/stat line. */
export function startTimeFromStat(stat: string): number {
  const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(rest[19] ?? Number.MAX_SAFE_INTEGER);
}

export interface PodProcess {
  pid: number;
  /** <procRoot>/<pid>/ns/net */
  netnsPath: string;
  netns: NetnsId;
  startTime: number;
}

/**
 * One pass over procRoot: for every pod UID found in a cgroup path, the processes in distinct network namespaces,
 * oldest first. Namespaces equal to the host's (pid 1) or the agent's own are skipped (CRI-O's conmon lives in the host netns).
 */
export function scanPodProcesses(procRoot: string): Map<string, PodProcess[]> {
  const excluded = [selfNetns().id, statNetns(join(procRoot, '1/ns/net'))].filter((x): x is NetnsId => x !== undefined);
  const byUid = new Map<string, PodProcess[]>();
  let entries: string[];
  try {
    entries = readdirSync(procRoot);
  } catch {
    return byUid;
  }
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const uid = podUidFromCgroup(readFileSync(join(procRoot, e, 'cgroup'), 'utf8'));
      if (!uid) continue;
      const netnsPath = join(procRoot, e, 'ns/net');
      const netns = statNetns(netnsPath);
      if (!netns || excluded.some((x) => sameNetns(x, netns))) continue;
      const startTime = startTimeFromStat(readFileSync(join(procRoot, e, 'stat'), 'utf8'));
      const list = byUid.get(uid) ?? [];
      const same = list.findIndex((p) => sameNetns(p.netns, netns));
      if (same < 0) list.push({ pid: Number(e), netnsPath, netns, startTime });
      else if ((list[same]?.startTime ?? 0) > startTime) list[same] = { pid: Number(e), netnsPath, netns, startTime };
      byUid.set(uid, list);
    } catch {
      // the process exited while we looked
    }
  }
  for (const list of byUid.values()) list.sort((a, b) => a.startTime - b.startTime);
  return byUid;
}

/** Global unicast addresses (v4 and v6) inside the namespace at netnsPath. */
export async function netnsAddresses(netnsPath: string): Promise<string[]> {
  const out = await runTool('ip', ['-j', 'addr', 'show', 'scope', 'global'], { netns: netnsPath });
  const links = JSON.parse(out) as { addr_info?: { local?: string }[] }[];
  return links.flatMap((l) => (l.addr_info ?? []).map((a) => a.local).filter((a): a is string => !!a));
}

/** The oldest candidate whose namespace holds one of the pod's IPs; undefined when none does (never a guess). */
export async function findPodNetns(candidates: PodProcess[], podIps: string[]): Promise<PodProcess | undefined> {
  if (podIps.length === 0) return undefined;
  for (const c of candidates) {
    try {
      const addrs = await netnsAddresses(c.netnsPath);
      if (addrs.some((a) => podIps.some((p) => sameIp(p, a)))) return c;
    } catch {
      // gone meanwhile
    }
  }
  return undefined;
}
