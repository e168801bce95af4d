// kill -9 of an agent while a mesh app streams, for every backend: captures on the link between nodes and on both pods'
// host-side veths hold 0 bytes of the app's payload in clear, and the traffic resumes through the mesh after a restart.
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import type { RedirectMode, Testbed, TestbedPod } from '../testbed/index.js';
import { podCounters } from '../../agent/src/redirect/ebpf.js';
import { captureFabric, captureNodeLink, countOccurrences } from './capture-wire.js';
import { AMBIENT, agentPod, eventually, hostVeth } from './helpers.js';

const PY = '/usr/bin/python3';
const PORT = 9000;

/**
 * The app: connects, writes lines of the marker in 4 KiB chunks every 2 ms, and on any error (refused, reset, timeout)
 * waits 100 ms and connects again, like a real client would; bounded in time. One line per event on stdout.
 */
const STREAMER = `
import socket, sys, time
ip, port, marker, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
chunk = ((marker + '\\n') * (4096 // (len(marker) + 1))).encode()
end = time.time() + secs
while time.time() < end:
    s = None
    try:
        s = socket.create_connection((ip, port), timeout=3)
        print('connected', flush=True)
        while time.time() < end:
            s.sendall(chunk)
            time.sleep(0.002)
    except OSError as e:
        print('error', type(e).__name__, flush=True)
        time.sleep(0.1)
    finally:
        if s is not None: s.close()
`;

interface Stream {
  /** Bytes the server app has received so far (its sink file). */
  received(): number;
  /** Waits until the server app received `more` bytes beyond `from`; returns how long it took (ms). */
  growth(from: number, more: number, timeoutMs: number): Promise<number>;
  connects(): number;
  stop(): Promise<void>;
}

/** Starts the sink in `server` (every connection's bytes appended to a file) and the streaming app in `client`. */
async function startStream(tb: Testbed, client: TestbedPod, server: TestbedPod, marker: string): Promise<Stream> {
  const sink = join(tb.runDir, `sink-${server.name}`);
  void server.spawn('sh', ['-c', `exec ncat -l -k --recv-only ${PORT} >> ${sink}`]).catch(() => undefined);
  await server.waitForPort(PORT);
  let out = '';
  const app = client.spawn(PY, ['-c', STREAMER, server.ip, String(PORT), marker, '110'], { reject: false, stdout: 'pipe' });
  app.stdout?.on('data', (d: Buffer) => {
    out += String(d);
  });
  const received = (): number => {
    try {
      return statSync(sink).size;
    } catch {
      return 0;
    }
  };
  return {
    received,
    async growth(from, more, timeoutMs) {
      const t0 = Date.now();
      const got = await eventually(async () => received(), (n) => n >= from + more, timeoutMs);
      if (got < from + more) throw new Error(`the app's traffic did not resume: ${got - from} bytes in ${timeoutMs} ms (${out.split('\n').slice(-5).join(' | ')})`);
      return Date.now() - t0;
    },
    connects: () => out.split('\n').filter((l) => l === 'connected').length,
    async stop() {
      app.kill('SIGTERM');
      await app;
    },
  };
}

interface Captures {
  stop(): Promise<{ where: string; raw: Buffer }[]>;
}

/** Captures on the fabric (between nodes) and on the host side of both pods' veths, all started before the traffic. */
async function startCaptures(tb: Testbed, pods: TestbedPod[], tag: string): Promise<Captures> {
  const fabric = await captureFabric(tb, `kill9-${tag}-fabric`);
  const links = await Promise.all(pods.map(async (p) => {
    const veth = await hostVeth(tb, p);
    return { where: `${p.node.name} ${veth} (host side of ${p.key})`, cap: await captureNodeLink(tb, p.node.index, veth, `kill9-${tag}-${p.name}`) };
  }));
  return {
    async stop() {
      const f = await fabric.stop();
      const rest = await Promise.all(links.map(async (l) => ({ where: l.where, ...(await l.cap.stop()) })));
      return [{ where: 'fabric br0 (between nodes)', raw: f.raw }, ...rest];
    },
  };
}

/** iptables arguments (after -I/-D) of the rule that hides TCP resets on a pod's loopback: filter table, OUTPUT chain. */
const HIDE_RESETS = ['OUTPUT', '-o', 'lo', '-p', 'tcp', '--tcp-flags', 'RST', 'RST', '-j', 'DROP'];

/**
 * kill -9 of one agent while the app streams; the app keeps trying for `downMs`; restart; the stream must resume.
 * With `hideResetsIn`, the race is made deterministic: an app whose connection the dying agent reset, but which has not
 * taken that reset in yet, keeps sending on it (its next segments leave before the reset arrives). A filter rule in
 * that pod drops every TCP reset on its loopback (where the agent's sockets answer the app) while the agent is down, so
 * the app never learns and retransmits for seconds: every one of those segments must still stay inside the pod.
 */
async function killPhase(t: ExecutionContext, tb: Testbed, node: number, stream: Stream, downMs: number, hideResetsIn?: TestbedPod): Promise<void> {
  const before = stream.received();
  if (hideResetsIn) await hideResetsIn.exec('iptables', ['-w', '5', '-t', 'filter', '-I', ...HIDE_RESETS]);
  await tb.agent(node).kill('SIGKILL');
  const killedAt = stream.received();
  await new Promise((r) => setTimeout(r, downMs));
  if (hideResetsIn) await hideResetsIn.exec('iptables', ['-w', '5', '-t', 'filter', '-D', ...HIDE_RESETS]);
  const whileDown = stream.received() - killedAt;
  await tb.agent(node).start();
  const resumed = stream.received();
  const ms = await stream.growth(resumed, 64 * 1024, 30_000);
  t.log(`node ${node} agent killed${hideResetsIn ? ' (resets hidden from the app)' : ''}: ${killedAt - before} bytes arrived around the kill, ` +
    `${whileDown} while it was down (${downMs} ms), 64 KiB more ${ms} ms after it was ready again; ${stream.connects()} connects so far`);
}

for (const mode of ['iptables', 'nftables', 'ebpf'] as RedirectMode[]) {
  netnsTest.serial(`[${mode}] kill -9 of the source, then the destination agent, then the source with resets unseen, while an app streams: no payload in clear on any link, traffic resumes through the mesh`, async (t) => {
    const tb = await withTestbed(t, { nodes: 2, redirectMode: mode });
    await tb.setNamespace('app', AMBIENT);
    const [client, server] = await tb.addPods([
      { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
      { node: 1, namespace: 'app', name: 'web', serviceAccount: 'web' },
    ]);
    if (!client || !server) throw new Error('pods missing');
    const marker = `KILL9-CLEARTEXT-${randomBytes(12).toString('hex')}`;
    const caps = await startCaptures(tb, [client, server], mode);
    const stream = await startStream(tb, client, server, marker);
    const orphaned = (): number => (mode === 'ebpf' ? podCounters(client.netnsPath, client.ifname)?.out_orphaned ?? -1 : 0);
    let kept = 0;
    try {
      await stream.growth(0, 256 * 1024, 20_000);
      t.true(((await agentPod(tb, client))?.stats?.outbound.hbone ?? 0) >= 1, 'the app\'s connection went through the mesh');

      await killPhase(t, tb, 0, stream, 2000);
      t.true(((await agentPod(tb, client))?.stats?.outbound.hbone ?? 0) >= 1, 'after the source agent\'s restart: through the mesh again');
      await killPhase(t, tb, 1, stream, 2000);
      t.true(((await agentPod(tb, server))?.stats?.inbound.hbone ?? 0) >= 1, 'after the destination agent\'s restart: through the mesh again');
      const before = orphaned();
      await killPhase(t, tb, 0, stream, 2000, client);
      kept = orphaned() - before;
    } finally {
      await stream.stop();
    }
    const seen = await caps.stop();
    const needle = Buffer.from(marker);
    const delivered = countOccurrences(readFileSync(join(tb.runDir, `sink-${server.name}`)), needle);
    t.true(delivered > 1000, `the server app got the marker (${delivered} times): the search would find it`);
    for (const c of seen) {
      t.true(c.raw.length > 100_000, `${c.where}: the capture saw the stream (${c.raw.length} bytes)`);
      t.is(countOccurrences(c.raw, needle), 0, `${c.where}: the app's payload never crossed in clear`);
    }
    // ebpf: with the agent's sockets gone, the unseen-reset segments were kept in the pod because their socket's SYN
    // had been captured (before the fix they left in clear: 68 markers on the client's veth in one run).
    if (mode === 'ebpf') t.true(kept > 0, `out_orphaned counted the segments kept in the pod (${kept})`);
    t.log(`${mode}: ${stream.connects()} connects in all; ${delivered} markers delivered; captures ${seen.map((c) => `${c.raw.length} B`).join(', ')}` +
      (mode === 'ebpf' ? `; out_orphaned +${kept}` : ''));
  });
}
