// Start-up cost of the plugin's fallbacks, no root needed: VERSION and ADD (against an agent double on a Unix socket)
// through the standalone executable and the Node bundle, next to a bare `node -e 0`; plus the executable's size.
// Run: node --import=tsx scripts/bench/plugin-exec.ts [runs]   (after scripts/build.sh)
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EVENT_PATHS } from '../../agent/src/protocol/cni-event.js';
import { CNI_MAIN, CNI_STANDALONE } from '../../test/testbed/repo.js';
import { dist, f1 } from './stats.js';

const runs = Number(process.argv[2] ?? 30);
const dir = mkdtempSync(join(tmpdir(), 'amb-plugin-exec-'));
const socket = join(dir, 'agent.sock');
const agent = createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    res.writeHead(req.url === EVENT_PATHS.add ? 200 : 404, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ result: 'enrolled' }));
  });
});
await new Promise<void>((resolve) => agent.listen(socket, resolve));

const ADD_ENV = {
  CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'c0ffee', CNI_NETNS: '/var/run/netns/x', CNI_IFNAME: 'eth0', CNI_PATH: '/opt/cni/bin',
  CNI_ARGS: 'K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p-0;K8S_POD_UID=u-0',
};
const CONF = JSON.stringify({ cniVersion: '1.0.0', name: 'k8s-pod-network', type: 'ambient-cni', agent_socket: socket, log_level: 'warn' });

function once(file: string, args: string[], env: Record<string, string>, input: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = execFile(file, args, { env }, (err) => (err ? reject(err) : resolve(performance.now() - t0)));
    child.stdin?.end(input);
  });
}

async function measure(label: string, file: string, args: string[], env: Record<string, string>, input: string): Promise<void> {
  await once(file, args, env, input); // warm the page cache
  const xs: number[] = [];
  for (let i = 0; i < runs; i++) xs.push(await once(file, args, env, input));
  const d = dist(xs);
  console.log(`| ${label} | ${f1(d.p50)} | ${f1(d.p99)} |`);
}

console.log(`ambient-cni-standalone: ${(statSync(CNI_STANDALONE).size / 2 ** 20).toFixed(1)} MiB; ${runs} runs each, exec to exit\n`);
console.log('| invocation | p50 ms | p99 ms |\n|---|---:|---:|');
try {
  await measure('`node -e 0` (floor)', process.execPath, ['-e', '0'], {}, '');
  await measure('VERSION, standalone executable', CNI_STANDALONE, [], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  await measure('VERSION, node ambient-cni.mjs', process.execPath, [CNI_MAIN], { CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  await measure('ADD (agent double), standalone executable', CNI_STANDALONE, [], ADD_ENV, CONF);
  await measure('ADD (agent double), node ambient-cni.mjs', process.execPath, [CNI_MAIN], ADD_ENV, CONF);
} finally {
  agent.close();
  rmSync(dir, { recursive: true, force: true });
}
