// Part of the `scale` bench part: idle RSS of the real agent (one-node testbed, no CNI ADD) with the files source and with
// the kubernetes source (an HTTPS fake API server inside the node netns, token auth), the same handful of remote pods in
// both, alternating sources each round. Also runs alone, as root after the build: npx tsx scripts/bench/source-rss.ts [rounds]
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns } from '../../agent/src/platform/netns.js';
import { listenFdIn } from '../../agent/src/platform/sockets.js';
import { FakeKubeApi, kubeconfigFor, makeTestTls } from '../../test/fixtures/fake-kube-api.js';
import { procRssKb, type Testbed } from '../../test/testbed/index.js';
import { progress, withTestbeds } from './run.js';
import { f1 } from './stats.js';

export interface SourceRssResult {
  pods: number;
  idleSeconds: number;
  /** VmRSS of the agent after idling, MB, one per round. */
  files: number[];
  kubernetes: number[];
}

/** Goal from issue 12: the kubernetes source costs at most this much idle RSS over the files source. */
export const KUBE_OVER_FILES_GOAL_MB = 15;

const PODS = 5;
const IDLE_SECONDS = 5;

const pod = (i: number): Record<string, unknown> => ({
  apiVersion: 'v1', kind: 'Pod',
  metadata: { name: `p${i}`, namespace: 'app', uid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, labels: { app: 'web' } },
  spec: { nodeName: `other-${i}`, serviceAccountName: 'web' },
  status: { phase: 'Running', podIP: `10.77.0.${i + 1}`, podIPs: [{ ip: `10.77.0.${i + 1}` }] },
});

const rssMb = (pid: number): number => procRssKb(pid) / 1024;

async function measureOnce(source: 'files' | 'kubernetes'): Promise<number> {
  const tls = makeTestTls();
  let api: FakeKubeApi | undefined;
  try {
    const kubeconfig = join(tls.dir, 'kubeconfig');
    const opts = {
      nodes: 1,
      withAmbientCni: false,
      agentLogLevel: 'info',
      agentArgs: source === 'kubernetes' ? ['--workload-source', 'kubernetes', '--kubeconfig', kubeconfig] : [],
      beforeAgents: async (bed: Testbed): Promise<void> => {
        if (source === 'files') {
          await bed.workloads.writeNamespace('app', {});
          for (let i = 0; i < PODS; i++) await bed.workloads.write(`pod-app-p${i}.yaml`, pod(i));
          return;
        }
        const node = Netns.open(bed.node(0).netnsPath);
        try {
          api = await new FakeKubeApi({ tls, token: 'bench', fd: listenFdIn(node, { address: '127.0.0.1', port: 0 }) }).start();
        } finally {
          node.close();
        }
        writeFileSync(kubeconfig, kubeconfigFor(api, { token: 'bench', caFile: tls.caFile }));
        api.put('namespaces', { metadata: { name: 'app' } });
        for (let i = 0; i < PODS; i++) api.put('pods', pod(i));
      },
    };
    return await withTestbeds([opts], async ([tb]) => {
      const pid = tb?.agent(0).pid;
      if (pid === undefined) throw new Error('agent not running');
      await new Promise((r) => setTimeout(r, IDLE_SECONDS * 1000));
      return rssMb(pid);
    });
  } finally {
    await api?.stop();
    tls.cleanup();
  }
}

export async function benchSourceRss(rounds: number): Promise<SourceRssResult> {
  const result: SourceRssResult = { pods: PODS, idleSeconds: IDLE_SECONDS, files: [], kubernetes: [] };
  for (let r = 0; r < rounds; r++) {
    for (const source of ['files', 'kubernetes'] as const) {
      progress(`scale: idle agent RSS, ${source} source, round ${r + 1} of ${rounds}`);
      result[source].push(await measureOnce(source));
    }
  }
  return result;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;

export function reportSourceRss(r: SourceRssResult, lines: string[]): void {
  const files = median(r.files);
  const kube = median(r.kubernetes);
  lines.push('### Idle agent RSS by workload source');
  lines.push('');
  lines.push(`The agent on a one-node testbed, ${r.pods} remote pods, no pod enrolled, VmRSS after ${r.idleSeconds} s idle; median of ${r.files.length} rounds (all: files ${r.files.map(f1).join(', ')}; kubernetes ${r.kubernetes.map(f1).join(', ')}). Kubernetes: HTTPS fake API server in the node netns, token kubeconfig.`);
  lines.push('');
  lines.push(`- files ${f1(files)} MB, kubernetes ${f1(kube)} MB: the kubernetes source costs ${f1(kube - files)} MB, ≤ ${KUBE_OVER_FILES_GOAL_MB} MB ${kube - files <= KUBE_OVER_FILES_GOAL_MB ? 'met' : '**missed**'}`);
  lines.push('');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const r = await benchSourceRss(Number(process.argv[2] ?? 3));
  const lines: string[] = [];
  reportSourceRss(r, lines);
  process.stdout.write(`${lines.join('\n')}\n`);
}
