// The kubelet-probe SNAT limited to the kubelet's cgroup (--probe-snat-cgroup): a process of that cgroup in the node's
// namespace reaches an enrolled pod's app as 169.254.7.127; any other local process is no longer let past STRICT.
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { RedirectMode } from '../testbed/index.js';
import { AMBIENT, agentPod, startEcho } from './helpers.js';

/** Where cgroup v2 is mounted (here /sys/fs/cgroup/unified; /sys/fs/cgroup on pure v2 hosts). */
function cgroup2Root(): string {
  const line = readFileSync('/proc/mounts', 'utf8').split('\n').find((l) => l.split(' ')[2] === 'cgroup2');
  const root = line?.split(' ')[1];
  if (!root) throw new Error('no cgroup2 mount');
  return root;
}

for (const mode of ['iptables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] with --probe-snat-cgroup only the kubelet's cgroup gets the probe SNAT; other node processes meet STRICT`, async (t) => {
    // A test-owned cgroup standing for the kubelet's (removed by exact name at the end).
    const rel = `/ambient-test-${randomBytes(3).toString('hex')}/kubelet`;
    const dir = join(cgroup2Root(), rel);
    mkdirSync(dir, { recursive: true });
    const tb = await withTestbed(t, { nodes: 1, redirectMode: mode, agentArgs: ['--probe-snat-cgroup', rel] });
    t.teardown(async () => {
      await tb.destroy();
      for (const d of [dir, join(dir, '..')]) {
        try {
          rmdirSync(d);
        } catch {
          // already gone
        }
      }
    });
    await tb.setNamespace('app', AMBIENT);
    await tb.writeWorkload('strict.yaml', { apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name: 'strict', namespace: 'app' }, spec: { mtls: { mode: 'STRICT' } } });
    const pod = await tb.addPod({ node: 0, namespace: 'app', name: 'productpage' });
    await startEcho(pod, 9080);
    const nat = String((await tb.nodeExec(0, 'iptables-save', ['-t', 'nat'])).stdout);
    t.regex(nat, new RegExp(`-m cgroup --path "${rel}"`), 'the SNAT names the cgroup');

    // `ip netns exec` gives its child a private /sys without the cgroup tree: this process (the host's view) moves the
    // shell into the cgroup while it waits, before it starts ncat (which inherits the cgroup).
    const kubeletRun = tb.nodeExec(0, 'sh', ['-c', `sleep 1; echo probe | ncat --no-shutdown -w 3 ${pod.ip} 9080`], { reject: false });
    writeFileSync(join(dir, 'cgroup.procs'), String(kubeletRun.pid));
    const kubelet = await kubeletRun;
    t.regex(String(kubelet.stdout), /pong:probe from 169\.254\.7\.127/, `the kubelet's probe reaches the app: ${String(kubelet.stderr)}`);
    t.is((await agentPod(tb, pod))?.stats?.inbound.opened ?? 0, 0, 'straight to the app, not through the agent');

    const other = await tb.nodeExec(0, 'ncat', ['--no-shutdown', '-w', '3', pod.ip, '9080'], { input: 'sneak\n', reject: false });
    t.notRegex(String(other.stdout), /pong:sneak/, 'another node process is not SNATed, so STRICT refuses its plaintext');
    t.true(((await agentPod(tb, pod))?.stats?.inbound.refused ?? 0) >= 1, 'the agent refused it');
    const rules = (await tb.agent(0).request('GET', `/v1/rules?pod=${encodeURIComponent('app/productpage')}`)).body as { node: { ok: boolean } };
    t.true(rules.node.ok, 'the node rule with the cgroup reads back in sync');
  });
}
