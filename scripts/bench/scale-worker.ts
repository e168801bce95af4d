// A child of the `scale` bench part: one workload source (files or kubernetes) and the workload directory over it,
// alone in a process so its RSS and CPU are its own; driven by the parent over IPC (see ScaleRequest / ScaleReply).
import { readFileSync } from 'node:fs';
import { createRootLogger } from '../../agent/src/log.js';
import { WorkloadDirectory } from '../../agent/src/workload/directory.js';
import { FilesWorkloadSource } from '../../agent/src/workload/files-source.js';
import { KubernetesWorkloadSource } from '../../agent/src/workload/kube-source.js';
import { KubeClient } from '../../agent/src/workload/kube/client.js';
import type { WorkloadSource } from '../../agent/src/workload/source.js';

/** What the parent asks: idle CPU over some seconds, to be told when an IP is in the directory, CPU so far, RSS. */
export type ScaleRequest =
  | { type: 'idle'; seconds: number }
  | { type: 'expect'; ip: string }
  | { type: 'cpu' }
  | { type: 'rss' }
  | { type: 'stop' };

export type ScaleReply =
  | { type: 'ready'; rssKb: number; loadMs: number; workloads: number }
  | { type: 'idle'; cpuPct: number }
  | { type: 'armed'; ip: string }
  | { type: 'applied'; ip: string; atMs: number }
  | { type: 'cpu'; cpuMs: number }
  | { type: 'rss'; rssKb: number };

/** VmRSS of this process from /proc, in KiB, after a full GC when node runs with --expose-gc. */
function rssKb(): number {
  (globalThis as { gc?: () => void }).gc?.();
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) : Number.NaN;
}

const cpuMs = (): number => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
};

const wallMs = (): number => performance.timeOrigin + performance.now();

function send(reply: ScaleReply): void {
  process.send?.(reply);
}

async function main(): Promise<void> {
  const [kind, where] = process.argv.slice(2);
  const log = createRootLogger('silent');
  let source: WorkloadSource;
  if (kind === 'files' && where) source = new FilesWorkloadSource(where, log);
  else if (kind === 'kube' && where) source = new KubernetesWorkloadSource({ client: new KubeClient({ kubeconfig: where }), nodeName: 'node-0', log });
  else throw new Error('usage: scale-worker.ts files DIR | kube KUBECONFIG');
  const t0 = performance.now();
  await source.start();
  const directory = new WorkloadDirectory(source, 'cluster.local', { nodeName: 'node-0' });
  const loadMs = performance.now() - t0;
  let expected: string | undefined;
  const check = (): void => {
    if (expected !== undefined && directory.lookup(expected)) {
      const ip = expected;
      expected = undefined;
      send({ type: 'applied', ip, atMs: wallMs() });
    }
  };
  source.onChange(check); // after the directory's own listener: the directory is up to date when this runs
  process.on('message', (m: ScaleRequest) => {
    if (m.type === 'idle') {
      const c0 = cpuMs();
      const w0 = performance.now();
      setTimeout(() => send({ type: 'idle', cpuPct: ((cpuMs() - c0) / (performance.now() - w0)) * 100 }), m.seconds * 1000);
    } else if (m.type === 'expect') {
      expected = m.ip;
      send({ type: 'armed', ip: m.ip });
      check();
    } else if (m.type === 'cpu') send({ type: 'cpu', cpuMs: cpuMs() });
    else if (m.type === 'rss') send({ type: 'rss', rssKb: rssKb() });
    else void source.stop().then(() => process.exit(0));
  });
  send({ type: 'ready', rssKb: rssKb(), loadMs, workloads: directory.all().length });
}

main().catch((err: unknown) => {
  process.stderr.write(`scale-worker: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
