// Idle RSS of the real agent (one-node testbed, no CNI ADD) with the files source and with the kubernetes source (an HTTPS
// fake API server inside the node netns, token auth), the same handful of remote pods in both. Run as root after the build:
//   npx tsx scripts/bench/source-rss.ts [rounds]
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Netns } from '../../agent/src/platform/netns.js';
import { listenFdIn } from '../../agent/src/platform/sockets.js';
import { FakeKubeApi, kubeconfigFor, makeTestTls } from '../../test/fixtures/fake-kube-api.js';
import { Testbed } from '../../test/testbed/index.js';

const PODS = 5;
const IDLE_MS = 5000;

const pod = (i: number): Record<string, unknown> => ({
  apiVersion: 'v1', kind: 'Pod',
  metadata: { name: `p${i}`, namespace: 'app', uid: `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`, labels: { app: 'web' } },
  spec: { nodeName: `other-${i}`, serviceAccountName: 'web' },
  status: { phase: 'Running', podIP: `10.77.0.${i + 1}`, podIPs: [{ ip: `10.77.0.${i + 1}` }] },
});

function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : Number.NaN;
}

async function measure(source: 'files' | 'kubernetes'): Promise<number> {
  const tls = makeTestTls();
  let api: FakeKubeApi | undefined;
  let tb: Testbed | undefined;
  try {
    const kubeconfig = join(tls.dir, 'kubeconfig');
    tb = await Testbed.create({
      nodes: 1,
      withAmbientCni: false,
      agentLogLevel: 'info',
      agentArgs: source === 'kubernetes' ? ['--workload-source', 'kubernetes', '--kubeconfig', kubeconfig] : [],
      beforeAgents: async (bed) => {
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
        const { writeFileSync } = await import('node:fs');
        writeFileSync(kubeconfig, kubeconfigFor(api, { token: 'bench', caFile: tls.caFile }));
        api.put('namespaces', { metadata: { name: 'app' } });
        for (let i = 0; i < PODS; i++) api.put('pods', pod(i));
      },
    });
    const pid = tb.agent(0).pid;
    if (pid === undefined) throw new Error('agent not running');
    await new Promise((r) => setTimeout(r, IDLE_MS));
    return rssMb(pid);
  } finally {
    await tb?.destroy();
    await api?.stop();
    tls.cleanup();
  }
}

const rounds = Number(process.argv[2] ?? 3);
const results: Record<string, number[]> = { files: [], kubernetes: [] };
for (let r = 0; r < rounds; r++) {
  for (const source of ['files', 'kubernetes'] as const) results[source]?.push(await measure(source));
}
const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] ?? Number.NaN;
const files = median(results.files ?? []);
const kube = median(results.kubernetes ?? []);
process.stdout.write(`${JSON.stringify(results)}\nidle agent RSS (median of ${rounds}): files ${files.toFixed(1)} MB, kubernetes ${kube.toFixed(1)} MB, difference ${(kube - files).toFixed(1)} MB\n`);
