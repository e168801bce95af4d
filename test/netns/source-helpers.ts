// Helpers of the source-preservation netns tests (source-address.test.ts for IPv4, source-ipv6.test.ts for IPv6): an app
// streaming a marker while the pod's veth is captured (and its agent killed meanwhile), a one-shot download, the reply
// guard's counter, the rules report, the cluster both set up.
// Each takes the address to use, so one helper serves both families.
import { randomBytes } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { withTestbed } from '../testbed/ava.js';
import type { RedirectMode, Testbed, TestbedOptions, TestbedPod } from '../testbed/index.js';
import type { RulesReply } from '../../agent/src/server/event-server.js';
import { captureNodeLink, countOccurrences, type RawCapture } from './capture-wire.js';
import { AMBIENT, NFT, eventually, hostVeth, startEcho } from './helpers.js';
import { PY } from '../testbed/takeover.js';

/**
 * The cluster of the source tests: two nodes (`opts`: families, agent arguments), an enrolled echo server `productpage`
 * on 9080 (node 1), mesh clients `sleep` (node 0) and `neighbour` (node 1), a plain client `legacy` (node 1).
 */
export async function sourceCluster(t: ExecutionContext, mode: RedirectMode, opts: Pick<TestbedOptions, 'ipFamilies' | 'agentArgs'> = {}): Promise<{
  tb: Testbed; productpage: TestbedPod; sleep: TestbedPod; neighbour: TestbedPod; legacy: TestbedPod;
}> {
  const tb = await withTestbed(t, { nodes: 2, redirectMode: mode, ...opts });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, neighbour, legacy] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'productpage' },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'neighbour', serviceAccount: 'neighbour' },
    { node: 1, namespace: 'legacy', name: 'legacy' },
  ]);
  if (!productpage || !sleep || !neighbour || !legacy) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  return { tb, productpage, sleep, neighbour, legacy };
}

/** The server app: to every client, lines of the marker in 4 KiB chunks every 2 ms until it fails; argv: bind address, port, marker. */
const STREAM_SERVER = `
import socket, sys, threading, time
addr, port, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
chunk = ((marker + '\\n') * (4096 // (len(marker) + 1))).encode()
s = socket.socket(socket.AF_INET6 if ':' in addr else socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); s.listen(8)
def serve(c):
    try:
        while True:
            c.sendall(chunk); time.sleep(0.002)
    except OSError: pass
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
`;

/**
 * Starts a capture on `server`'s host-side veth, then the app streaming a fresh marker to the mesh client `client`, which
 * connects to `host` (the server's address of the family under test; ncat, ending after 3 s without data: its stdout is
 * the byte count received); returns once the stream has run 1.5 s.
 */
export async function streamWhileCapturing(
  tb: Testbed, server: TestbedPod, client: TestbedPod, port: number, name: string, host = server.ip,
): Promise<{ marker: string; cap: RawCapture; reader: ReturnType<TestbedPod['spawn']> }> {
  const marker = `SRC-CLEARTEXT-${randomBytes(10).toString('hex')}`;
  const cap = await captureNodeLink(tb, server.node.index, await hostVeth(tb, server), name);
  void server.spawn(PY, ['-c', STREAM_SERVER, host.includes(':') ? '::' : '0.0.0.0', String(port), marker], { reject: false, timeout: 90_000 });
  await server.waitForPort(port);
  const reader = client.spawn('sh', ['-c', `ncat --recv-only -i 3 ${host} ${port} | wc -c`], { reject: false, timeout: 30_000 });
  await new Promise((r) => setTimeout(r, 1500));
  return { marker, cap, reader };
}

/** Packets the reply guard dropped in a pod so far: its iptables (ip6tables for 6) rule's counter, or its nft rule's (one for both families). */
export async function guardDrops(pod: TestbedPod, mode: 'iptables' | 'nftables', family: 4 | 6 = 4): Promise<number> {
  const out = mode === 'iptables'
    ? String((await pod.exec(family === 6 ? 'ip6tables-save' : 'iptables-save', ['-c', '-t', 'mangle'])).stdout)
    : String((await pod.exec(NFT, ['list', 'chain', 'inet', 'ambient-reply', 'reply-guard'])).stdout);
  const m = mode === 'iptables' ? /^\[(\d+):\d+\] -A AMBIENT_REPLY_GUARD ! -o lo /m.exec(out) : /oifname != "lo" .* counter packets (\d+) bytes \d+ drop/.exec(out);
  if (!m) throw new Error(`no reply guard in the pod: ${out}`);
  return Number(m[1]);
}

/** The pod's rules as the agent reads them back (`ambient-node rules`): in sync or not, and what it found. */
export async function podRulesReport(tb: Testbed, pod: TestbedPod): Promise<RulesReply['attachments'][number] | undefined> {
  const r = await tb.agent(pod.node.index).request('GET', `/v1/rules?pod=${encodeURIComponent(`${pod.namespace}/${pod.name}`)}`);
  return (r.body as RulesReply).attachments[0];
}

/**
 * `size` random bytes sent by a one-shot server in `server` on `port` to the first client, which connects to `host`;
 * resolves with their sha256 as sent and as received by `client`.
 */
export async function download(server: TestbedPod, client: TestbedPod, port: number, size: number, host = server.ip): Promise<{ sent: string; received: string }> {
  const file = `/tmp/ambient-src-${server.netnsName}-${port}`;
  await server.exec('sh', ['-c', `head -c ${size} /dev/urandom > ${file}`]);
  const sent = String((await server.exec('sha256sum', [file])).stdout).split(' ')[0] ?? '';
  const serving = server.spawn('sh', ['-c', `ncat -l ${port} --send-only < ${file}; rm -f ${file}`], { timeout: 60_000, reject: false });
  await server.waitForPort(port);
  const r = await client.exec('sh', ['-c', `ncat --recv-only -w 10 ${host} ${port} | sha256sum`], { timeout: 60_000 });
  await serving;
  return { sent, received: String(r.stdout).split(' ')[0] ?? '' };
}

/**
 * The MSS the app advertised on a connection from `client` to its port (ss -ti advmss), read while the client holds it
 * open a few seconds. A source-preserved connection from the agent arrives on lo: the app's SYN-ACK must take the reply
 * route through lo (tcp_fwmark_accept) and advertise lo's MSS (~64 KB), not eth0's 1448, which made the agent send the
 * app its bytes in 1448-byte segments.
 */
export async function appAdvertisedMss(server: TestbedPod, client: TestbedPod, port: number, host = server.ip): Promise<number> {
  const holding = client.spawn('sh', ['-c', `sleep 4 | ncat ${host.includes(':') ? `-6 ${host}` : host} ${port}`], { timeout: 20_000, reject: false });
  try {
    for (let i = 0; i < 40; i++) {
      const m = /advmss:(\d+)/.exec(await appSocketInfo(server, port, ['established'], true));
      if (m) return Number(m[1]);
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`no established connection on ${server.key}:${port}`);
  } finally {
    await holding;
  }
}

/** iptables / ip6tables arguments (after -I/-D) hiding TCP resets on a pod's loopback, where the agent's sockets answer the app. */
const HIDE_RESETS = ['OUTPUT', '-o', 'lo', '-p', 'tcp', '--tcp-flags', 'RST', 'RST', '-j', 'DROP'];

/**
 * `ss -ti` of the app's established connections on `port`: their TCP internals (mss, advmss, retransmissions). Sockets
 * of the agent (a `node` process) are left out: under the ebpf backend's socket assignment the agent's accepted socket
 * of a plain client keeps the app's port as its own. `owned`: only sockets some process holds, since that socket
 * belongs to no process until the agent has accepted it (ss then shows no `users:`, and eth0's MSS).
 */
async function appSocketInfo(pod: TestbedPod, port: number, states: string[] = ['established'], owned = false): Promise<string> {
  const out = String((await pod.exec('ss', ['-tinpH', ...states.flatMap((s) => ['state', s]), `( sport = :${port} )`])).stdout);
  const sockets = out.split(/\n(?!\s)/); // a socket: its address line, then its indented TCP internals
  return sockets.filter((s) => s.trim() !== '' && !s.includes('users:(("node"') && (!owned || s.includes('users:(('))).join('\n');
}

/** iptables / ip6tables arguments (after -I/-D/-C) counting the TCP packets a pod's app sends from `port`, on any path. */
function appSendsRule(port: number): string[] {
  return ['OUTPUT', '-p', 'tcp', '--sport', String(port)];
}

/**
 * Packets the app sent so far from `port` (the counter of `appSendsRule`): retransmissions, zero-window probes and sends
 * after a FIN alike. An agent killed with nothing unread sends the app a FIN, not a reset: the app's socket is then in
 * close-wait, and one stalled by a zero window probes rather than retransmits.
 */
async function appPacketsSent(pod: TestbedPod, iptables: string, port: number): Promise<number> {
  const out = String((await pod.exec(`${iptables}-save`, ['-c', '-t', 'filter'])).stdout);
  const m = new RegExp(`^\\[(\\d+):\\d+\\] -A OUTPUT -p tcp -m tcp --sport ${port}$`, 'm').exec(out);
  if (!m) throw new Error(`no counting rule for port ${port} in ${pod.key}: ${out}`);
  return Number(m[1]);
}

/**
 * The app streams to a mesh client; the destination agent is killed (-9) while resets are hidden from the app, which
 * keeps sending toward the client's address for a while. With the agent's transparent socket gone, none of it may leave
 * the pod in clear: the capture on the pod's host-side veth holds no marker. Restarts the agent before returning.
 * `restartArgs`: the agent comes back with these (e.g. source preservation off) while resets are still hidden, and the
 * app must have sent again (retransmitted) after the new agent adopted the pod before the capture ends. `host`: the
 * server's address the client connects to (its family's resets are hidden). `afterKill`: run at once after the kill,
 * while the app retransmits toward the client (e.g. a rule deleted).
 */
export async function killWhileAppStreams(
  tb: Testbed, server: TestbedPod, client: TestbedPod, port: number,
  opts: { restartArgs?: string[]; host?: string; afterKill?: () => Promise<void> } = {},
): Promise<{ markersOut: number; received: number; captured: number; sentAfterAdopt: boolean; appSockets: string }> {
  const { restartArgs, host = server.ip } = opts;
  const { marker, cap, reader } = await streamWhileCapturing(tb, server, client, port, `src-kill-${server.name}`, host);
  const iptables = host.includes(':') ? 'ip6tables' : 'iptables';
  await server.exec(iptables, ['-w', '5', '-t', 'filter', '-I', ...HIDE_RESETS]);
  if (restartArgs) await server.exec(iptables, ['-w', '5', '-t', 'filter', '-I', ...appSendsRule(port)]);
  const agent = tb.agent(server.node.index);
  await agent.kill('SIGKILL');
  await opts.afterKill?.();
  await new Promise((r) => setTimeout(r, 2000));
  let sentAfterAdopt = true;
  let appSockets = '';
  if (restartArgs) {
    agent.spec.extraArgs.push(...restartArgs);
    await agent.start();
    await eventually(() => podRulesReport(tb, server), (r) => r !== undefined, 10_000);
    const before = await appPacketsSent(server, iptables, port);
    // The app's retransmissions back off exponentially from the kill (…, 6.4 s, 12.8 s, 25.6 s apart): wait past the next one.
    sentAfterAdopt = (await eventually(() => appPacketsSent(server, iptables, port), (n) => n > before, 45_000)) > before;
    if (!sentAfterAdopt) appSockets = `${before} packets sent before the adoption, no more since; sockets: ${await appSocketInfo(server, port, ['all'])}`;
    await server.exec(iptables, ['-w', '5', '-t', 'filter', '-D', ...appSendsRule(port)]);
  }
  await server.exec(iptables, ['-w', '5', '-t', 'filter', '-D', ...HIDE_RESETS]);
  if (!restartArgs) await agent.start();
  const received = Number(String((await reader).stdout).trim()) || 0;
  const raw = (await cap.stop()).raw;
  return { markersOut: countOccurrences(raw, Buffer.from(marker)), received, captured: raw.length, sentAfterAdopt, appSockets };
}

/**
 * Each client's connection to a port of `server` (at `host`) where nothing listens fails at once (well inside the agent's 10 s
 * upstream dial timeout): the app pod's kernel resets the agent's preserved-source SYN, and that reset must reach the
 * agent through lo (the reply mark, fwmark_reflect or the restore), not meet the reply guard on its way to eth0.
 */
export async function closedPortRefused(t: ExecutionContext, tb: Testbed, server: TestbedPod, clients: TestbedPod[], what: string, host = server.ip): Promise<void> {
  for (const client of clients) {
    const started = Date.now();
    const r = await client.exec('ncat', ['--no-shutdown', '-w', '12', host, '9999'], { input: 'x\n', timeout: 20_000, reject: false });
    const ms = Date.now() - started;
    t.false(String(r.stdout).includes('pong'), `nothing answers on 9999: ${String(r.stdout)}`);
    t.true(ms < 5000, `${what}: ${client.key} -> ${host} port 9999 refused after ${ms} ms, not the dial timeout: ${String(r.stderr)}`);
  }
  // The agent logs the refusal once its data plane reports it, which may come after the client saw its connection fail.
  const refusedLines = async (): Promise<number> => (await tb.agent(server.node.index).logs({ currentRun: true }))
    .filter((l) => String(l.error ?? '').includes(':9999') && /ECONNREFUSED/.test(String(l.error))).length;
  const refused = await eventually(refusedLines, (n) => n >= clients.length);
  t.true(refused >= clients.length, `${what}: the agent saw the app's port refuse (${refused} lines)`);
}
