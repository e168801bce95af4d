// The demo: a simulated 2-node cluster on this machine (embedded defaults: files workload source, builtin CA), an ambient
// namespace, traffic between pods in HBONE, a Service called by name, the wire, the identities, and what the agents did.
// Tears everything down at the end or on Ctrl-C; re-runnable.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { AGENT_MAIN, Testbed, type RedirectMode, type TestbedPod } from '../test/testbed/index.js';
import { captureFabric } from '../test/netns/capture-wire.js';

const args = process.argv.slice(2);
const asked = args.includes('--redirect-mode') ? args[args.indexOf('--redirect-mode') + 1] : undefined;
const mode: RedirectMode = asked === 'nftables' || asked === 'ebpf' ? asked : 'iptables';
const keep = args.includes('--keep');

const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const step = (n: number, s: string): void => void process.stdout.write(`\n${bold(`== ${n}. ${s}`)}\n`);
const say = (s: string): void => void process.stdout.write(`${s}\n`);
const indent = (s: string): string => s.trimEnd().split('\n').map((l) => `   ${l}`).join('\n');
const sha = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex').slice(0, 16);

async function cli(tb: Testbed, node: number, ...cmd: string[]): Promise<string> {
  const r = await tb.nodeExec(node, process.execPath, [AGENT_MAIN, ...cmd, '--socket', tb.node(node).socketPath], { reject: false });
  return `${String(r.stdout)}${String(r.stderr)}`;
}

async function echo(client: TestbedPod, server: TestbedPod, port: number, msg: string): Promise<string> {
  const r = await client.exec('ncat', ['--no-shutdown', '-w', '3', server.ip, String(port)], { input: `${msg}\n`, reject: false });
  return String(r.stdout).trim() || `(failed: ${String(r.stderr).trim()})`;
}

/** A real HTTP client (curl) in `client` fetching `url`: the status line and the body's first line, or why it failed. */
async function curl(client: TestbedPod, url: string): Promise<string> {
  const r = await client.exec('curl', ['-sS', '-m', '5', '-o', '-', '-w', '\n[HTTP %{http_code} from %{remote_ip}:%{remote_port}]', url], { reject: false });
  const out = String(r.stdout).trim().split('\n');
  return r.exitCode === 0 ? `${out[0] ?? ''} ${out.at(-1) ?? ''}` : `(refused: ${String(r.stderr).trim()})`;
}

async function main(): Promise<void> {
  say(bold('ambient-node demo') + ` — 2 simulated nodes, redirection backend ${mode}`);
  const tb = await Testbed.create({ nodes: 2, redirectMode: mode, agentLogLevel: 'info' });
  try {
    step(1, 'cluster');
    for (const n of tb.nodes) say(`   node ${n.name}: underlay ${n.underlayIp}, pods ${n.podCidr}, agent pid ${n.agent?.pid}`);
    say(`   workloads folder (the agents' embedded "files" source): ${tb.workloadsDir}`);

    step(2, 'namespace ambient-demo is labelled istio.io/dataplane-mode=ambient; legacy is not');
    await tb.setNamespace('ambient-demo', { 'istio.io/dataplane-mode': 'ambient' });
    await tb.setNamespace('legacy', {});
    const pods = await tb.addPods([
      { node: 0, namespace: 'ambient-demo', name: 'sleep', serviceAccount: 'sleep' },
      { node: 0, namespace: 'ambient-demo', name: 'notsleep', serviceAccount: 'notsleep' },
      { node: 1, namespace: 'ambient-demo', name: 'productpage', serviceAccount: 'bookinfo-productpage', labels: { app: 'productpage' } },
      { node: 0, namespace: 'legacy', name: 'curl' },
      { node: 1, namespace: 'legacy', name: 'httpbin' },
    ]);
    const [sleep, notsleep, productpage, curlPod, httpbin] = pods as [TestbedPod, TestbedPod, TestbedPod, TestbedPod, TestbedPod];
    for (const p of pods) {
      const cni = p.addOutcome.invocations.map((i) => `${i.plugin} ${Math.round(i.durationMs)} ms`).join(', ');
      say(`   CNI ADD ${p.key.padEnd(24)} ${p.ip.padEnd(12)} on ${p.node.name}   (${cni})`);
    }

    step(3, 'what each agent captured (`ambient-node pods` on each node)');
    for (const i of [0, 1]) say(`   ${tb.node(i).name}:\n${indent(await cli(tb, i, 'pods'))}`);

    step(4, 'inside sleep\'s network namespace: the agent\'s listeners and the redirection rules (`ambient-node rules`)');
    say(indent(String((await sleep.exec('ss', ['-Hltnp'])).stdout)));
    say(indent(await cli(tb, 0, 'rules', 'ambient-demo/sleep')));
    say('   legacy/curl has none of it:');
    const curlRules = String((await curlPod.exec('iptables-save', ['-t', 'nat'])).stdout);
    say(`   ${/AMBIENT/.test(curlRules) ? 'UNEXPECTED: rules found' : 'no AMBIENT chains'}, listeners: ${String((await curlPod.exec('ss', ['-Hltn'])).stdout).trim() || 'none'}`);

    step(5, 'traffic');
    const marker = 'DEMO-SECRET-PAYLOAD';
    const cap = await captureFabric(tb, 'demo');
    for (const p of [productpage, httpbin]) {
      void p.spawn('ncat', ['-l', '-k', '9090', '--sh-exec', 'read l; echo "pong:$l (seen from $NCAT_REMOTE_ADDR)"']).catch(() => undefined);
      await p.waitForPort(9090);
    }
    say(`   sleep       -> productpage: ${await echo(sleep, productpage, 9090, marker)}`);
    say(`   notsleep    -> productpage: ${await echo(notsleep, productpage, 9090, 'hi')}`);
    say(`   legacy/curl -> productpage: ${await echo(curlPod, productpage, 9090, 'plain')}   (inbound still captured)`);
    say(`   legacy/curl -> httpbin:     ${await echo(curlPod, httpbin, 9090, 'direct')}   (neither side enrolled: untouched)`);
    say(`   productpage sees each client's own IP (sleep ${sleep.ip}, notsleep ${notsleep.ip}, curl ${curlPod.ip}): inbound source preservation; with --preserve-source=false it would see the agent, i.e. its own IP ${productpage.ip}`);
    const data = randomBytes(4 * 1024 * 1024);
    const sink = productpage.spawn('sh', ['-c', 'ncat -l 9000 --recv-only | sha256sum'], { timeout: 30_000 });
    await productpage.waitForPort(9000);
    await sleep.exec('ncat', ['--send-only', '-w', '5', productpage.ip, '9000'], { input: data });
    const got = String((await sink).stdout).slice(0, 16);
    say(`   sleep -> productpage 4 MiB: sent sha256 ${sha(data)}…, received ${got}… ${got === sha(data) ? '(intact)' : '(MISMATCH)'}`);

    step(6, 'on the wire between the nodes: mesh traffic is mutual TLS 1.3 to port 15008 (tshark on the link)');
    const wire = await cap.stop();
    say(`   the first packets of step 5 (sleep's message was "${marker}"):`);
    const summary = await execa('tshark', ['-r', wire.file, '-c', '8', '-T', 'fields', '-E', 'separator= ', '-e', 'ip.src', '-e', 'tcp.srcport', '-e', 'ip.dst', '-e', 'tcp.dstport', '-e', '_ws.col.Protocol', '-e', '_ws.col.Info']);
    say(indent(summary.stdout));
    say(`   ports that carried payload: ${[...wire.payloadPorts].join(', ')} (15008: HBONE between mesh pods; 9090: legacy/curl, which is not in the mesh)`);
    say(`   "${marker}" anywhere on the wire: ${wire.raw.includes(Buffer.from(marker)) ? 'YES (unexpected)' : 'no'}`);
    say(`   TLS ClientHellos: ${wire.clientHellos.length}, SNI: ${wire.clientHellos.map((h) => h.sni || 'none').join(', ')}`);

    step(7, 'workload identities (`ambient-node certs` on each node)');
    for (const i of [0, 1]) say(`   ${tb.node(i).name}:\n${indent(await cli(tb, i, 'certs'))}`);

    step(8, 'Services: sleep calls http://productpage:9080/ by name (cluster DNS, a ClusterIP, kube-proxy rules on every node)');
    const www = join(tb.runDir, 'productpage-www');
    await mkdir(www, { recursive: true });
    await writeFile(join(www, 'index.html'), 'productpage: hello from the bookinfo product page\n');
    void productpage.spawn('/usr/bin/python3', ['-m', 'http.server', '9080', '--bind', '0.0.0.0', '--directory', www]).catch(() => undefined);
    await productpage.waitForPort(9080);
    const svc = await tb.addService({ namespace: 'ambient-demo', name: 'productpage', selector: { app: 'productpage' }, ports: [{ name: 'http', port: 9080, targetPort: 9080 }] });
    say(`   Service ambient-demo/productpage: ClusterIP ${svc.clusterIP}, DNS ${svc.hostname}; its EndpointSlice lists ${productpage.ip}:9080`);
    say(`   pod resolv.conf: ${String((await sleep.exec('cat', ['/etc/resolv.conf'])).stdout).trim().split('\n').join(' | ')}`);
    say('   node 0\'s kube-proxy rules for it (iptables mode):');
    const nat = String((await tb.nodeExec(0, 'iptables-save', ['-t', 'nat'])).stdout).split('\n').filter((l) => l.includes(svc.clusterIP) || /^-A KUBE-SEP-.*DNAT/.test(l));
    say(indent(nat.join('\n')));
    say('   `ambient-node services` on node 0: the agent resolves the ClusterIP itself, inside the client pod:');
    say(indent(await cli(tb, 0, 'services')));
    const svcCap = await captureFabric(tb, 'demo-services');
    say(`   sleep       $ curl http://productpage:9080/  -> ${await curl(sleep, 'http://productpage:9080/')}`);
    say(`   notsleep    $ curl http://productpage:9080/  -> ${await curl(notsleep, 'http://productpage:9080/')}`);
    const svcWire = await svcCap.stop();
    say(`   on the link meanwhile: ports that carried payload ${[...svcWire.payloadPorts].join(', ')} (15008 only: HBONE to the endpoint, never the ClusterIP in clear); page in clear: ${svcWire.raw.includes(Buffer.from('bookinfo product page')) ? 'YES (unexpected)' : 'no'}`);
    say(`   legacy/curl $ curl http://productpage.ambient-demo:9080/  -> ${await curl(curlPod, 'http://productpage.ambient-demo:9080/')}   (not in the mesh: kube-proxy's DNAT, plaintext)`);
    const out = (await tb.agent(0).logs({ currentRun: true })).filter((l) => l.scope === 'access' && l['dst.service']).at(-1);
    say(`   node 0's access log line (source side):\n   ${JSON.stringify(out)}`);

    step(9, 'authorization: only sleep may call productpage (an AuthorizationPolicy in the workloads folder), through the Service');
    await tb.writeWorkload('productpage-viewer.yaml', {
      apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
      metadata: { name: 'productpage-viewer', namespace: 'ambient-demo' },
      spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW',
        rules: [{ from: [{ source: { principals: ['cluster.local/ns/ambient-demo/sa/sleep'] } }] }] },
    });
    await new Promise((r) => setTimeout(r, 1500)); // the agents pick the file up within a second
    const capAuthz = await captureFabric(tb, 'demo-authz');
    say(`   sleep    $ curl http://productpage:9080/  -> ${await curl(sleep, 'http://productpage:9080/')}`);
    say(`   notsleep $ curl http://productpage:9080/  -> ${await curl(notsleep, 'http://productpage:9080/')}   (denied: not the sleep identity)`);
    const authzWire = await capAuthz.stop();
    say(`   on the link meanwhile: ports that carried payload ${[...authzWire.payloadPorts].join(', ')} (only HBONE), page in clear: ${authzWire.raw.includes(Buffer.from('bookinfo product page')) ? 'YES (unexpected)' : 'no'}`);
    say('   `ambient-node policy check` explains both, for the endpoints behind the Service:');
    say(indent(await cli(tb, 1, 'policy', 'check', '--from', 'ambient-demo/sleep', '--to', 'ambient-demo/productpage:9080')));
    say(indent(await cli(tb, 1, 'policy', 'check', '--from', 'ambient-demo/notsleep', '--to', 'ambient-demo/productpage:9080')));
    const denied = (await tb.agent(1).logs({ currentRun: true })).filter((l) => l.scope === 'access' && l.response_flags === 'DENY').at(-1);
    say(`   node 1's access log line for the refusal:\n   ${JSON.stringify(denied)}`);
    await tb.removeWorkload('productpage-viewer.yaml');

    step(10, 'what the agents carried, and a connection held open (`ambient-node pods`, `ambient-node conns`)');
    for (const i of [0, 1]) say(`   ${tb.node(i).name}:\n${indent(await cli(tb, i, 'pods'))}`);
    const held = sleep.spawn('sh', ['-c', `(echo held-open; sleep 5) | ncat ${productpage.ip} 9090`], { reject: false, timeout: 10_000 });
    await new Promise((r) => setTimeout(r, 500));
    for (const i of [0, 1]) say(`   ${tb.node(i).name}:\n${indent(await cli(tb, i, 'conns'))}`);
    held.kill();
    await held;

    step(11, 'fail closed: the agent on node 1 is killed (kill -9)');
    await tb.agent(1).kill('SIGKILL');
    say(`   sleep -> productpage while the agent is down: ${await curl(sleep, 'http://productpage:9080/')}`);
    await tb.agent(1).start();
    say(`   agent restarted, pods re-adopted without any CNI ADD: ${await curl(sleep, 'http://productpage:9080/')}`);

    if (keep) {
      say(`\ncluster kept up (run dir ${tb.runDir}); Ctrl-C tears it down`);
      await new Promise<void>((resolve) => process.once('SIGINT', () => resolve()));
    }
  } finally {
    step(12, 'tearing down');
    await tb.destroy();
    say('   done: namespaces, interfaces, processes and state removed');
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
