// Stand-alone check of the native HBONE data plane on loopback (no testbed, no agent): iperf3 through a native HBONE
// client process and a native HBONE server process, against a stunnel mutual-TLS pair and direct TCP, same certificates.
// Usage (root not needed; 127.0.0.1 only): npx tsx scripts/bench/native-loopback.ts [seconds] [order, e.g. native,stunnel,direct]
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { encodeHeaders, loadNativeLib, parseEvent, MAX_EVENT_LINE } from '../../agent/src/hbone/native-lib.js';
import { LineSplitter } from '../../agent/src/protocol/line-splitter.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { takeFd } from '../../agent/src/platform/sockets.js';
import { relaySettings, serverLimits } from '../../agent/src/hbone/settings.js';

const TD = 'cluster.local';
const PORTS = { app: 25201, hbone: 25008, native: 25209, stunnelIn: 25210, stunnelTls: 25211 };
interface Leaf { identity: string; chain: string; key: string }
interface Material { dir: string; root: string; client: Leaf; server: Leaf }

async function issue(): Promise<Material> {
  const dir = mkdtempSync(join(tmpdir(), 'ambient-native-loopback-'));
  const ca = await BuiltinCa.ephemeral({ trustDomain: TD });
  const leaf = async (name: string): Promise<Leaf> => {
    const identity = `spiffe://${TD}/ns/bench/sa/${name}`;
    const k = await generateP256();
    const signed = await ca.sign({ csrPem: await createCsr(identity, k.keys), identity, ttlSeconds: 3600 });
    const l = { identity, chain: signed.chainPem.join(''), key: k.keyPem.endsWith('\n') ? k.keyPem : `${k.keyPem}\n` };
    writeFileSync(join(dir, `${name}.crt`), l.chain);
    writeFileSync(join(dir, `${name}.key`), l.key, { mode: 0o600 });
    return l;
  };
  writeFileSync(join(dir, 'ca.pem'), ca.rootPem);
  return { dir, root: ca.rootPem, client: await leaf('client'), server: await leaf('server') };
}

/** Starts the library with the agent's settings and dispatches its events; returns it. */
function startLib(onEvent: (e: NonNullable<ReturnType<typeof parseEvent>>) => void): ReturnType<typeof loadNativeLib> {
  const lib = loadNativeLib();
  const fd = lib.start(relaySettings(serverLimits()));
  if (fd < 0) throw new Error(lib.lastError());
  const events = new net.Socket({ fd, readable: true, writable: true });
  const split = new LineSplitter(MAX_EVENT_LINE);
  events.setEncoding('utf8');
  events.on('data', (d: string) => {
    for (const line of split.push(d)) {
      const e = parseEvent(line);
      if (e) onEvent(e);
    }
  });
  events.unref();
  return lib;
}

/** The HBONE server process: accepts TLS on PORTS.hbone, answers every CONNECT with a connection to the app. */
async function serverRole(m: Material): Promise<void> {
  const lib = startLib((e) => {
    if (e.ev !== 'request') return;
    const up = net.connect({ port: PORTS.app, host: '127.0.0.1' });
    up.pause();
    up.once('connect', () => lib.answer(e.stream, 200, takeFd(up)));
    up.once('error', () => lib.answer(e.stream, 503, -1));
  });
  const ctx = lib.ctxNew(true, m.server.chain, m.server.key, m.root);
  if (!ctx) throw new Error(lib.lastError());
  net.createServer({ pauseOnConnect: true }, (s) => lib.serverSession(ctx, takeFd(s), TD)).listen(PORTS.hbone, '127.0.0.1');
  await new Promise(() => undefined);
}

/** The HBONE client side: every connection to PORTS.native becomes a CONNECT stream on one pooled session. */
async function clientRole(m: Material): Promise<void> {
  let up: (() => void) | undefined;
  const lib = startLib((e) => {
    if (e.ev === 'up') up?.();
  });
  const ctx = lib.ctxNew(false, m.client.chain, m.client.key, m.root);
  if (!ctx) throw new Error(lib.lastError());
  let session: Promise<number> | undefined;
  const getSession = (): Promise<number> =>
    (session ??= new Promise<number>((resolve, reject) => {
      const raw = net.connect({ port: PORTS.hbone, host: '127.0.0.1' });
      raw.pause();
      raw.once('error', reject);
      raw.once('connect', () => {
        const id = lib.clientSession(ctx, takeFd(raw), m.server.identity);
        up = () => resolve(id);
      });
    }));
  net.createServer({ pauseOnConnect: true }, (down) => {
    void getSession().then((id) => lib.clientStream(id, takeFd(down), `127.0.0.1:${PORTS.app}`, encodeHeaders({ forwarded: 'for="127.0.0.1:1"' })));
  }).listen(PORTS.native, '127.0.0.1');
}

function stunnelConf(m: Material, client: boolean): string {
  const who = client ? 'client' : 'server';
  return [
    'foreground = yes', 'pid =', 'debug = warning',
    `cert = ${join(m.dir, `${who}.crt`)}`, `key = ${join(m.dir, `${who}.key`)}`, `CAfile = ${join(m.dir, 'ca.pem')}`, 'verifyChain = yes',
    ...(client ? [] : ['requireCert = yes']),
    'sslVersionMin = TLSv1.3', 'sslVersionMax = TLSv1.3', 'ciphersuites = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256', '',
    client
      ? `[x]\nclient = yes\naccept = 127.0.0.1:${PORTS.stunnelIn}\nconnect = 127.0.0.1:${PORTS.stunnelTls}\n`
      : `[x]\naccept = 127.0.0.1:${PORTS.stunnelTls}\nconnect = 127.0.0.1:${PORTS.app}\n`,
  ].join('\n');
}

async function iperf(port: number, seconds: string): Promise<number> {
  const srv = execa('iperf3', ['-s', '-1', '-p', String(PORTS.app)], { reject: false });
  await new Promise((r) => setTimeout(r, 300));
  const r = await execa('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', seconds, '-J'], { reject: false });
  await srv;
  try {
    return (JSON.parse(r.stdout) as { end: { sum_received: { bits_per_second: number } } }).end.sum_received.bits_per_second / 1e9;
  } catch {
    return Number.NaN;
  }
}

if (process.env.AMBIENT_LOOPBACK_ROLE === 'server') {
  await serverRole(JSON.parse(readFileSync(join(process.env.AMBIENT_LOOPBACK_DIR ?? '', 'material.json'), 'utf8')) as Material);
} else {
  const seconds = process.argv[2] ?? '5';
  const order = (process.argv[3] ?? 'native,stunnel,direct,native,stunnel,native,stunnel').split(',');
  const m = await issue();
  writeFileSync(join(m.dir, 'material.json'), JSON.stringify(m), { mode: 0o600 });
  writeFileSync(join(m.dir, 'c.conf'), stunnelConf(m, true));
  writeFileSync(join(m.dir, 's.conf'), stunnelConf(m, false));
  const children = [
    execa(process.execPath, [...process.execArgv, process.argv[1] ?? ''], { env: { AMBIENT_LOOPBACK_ROLE: 'server', AMBIENT_LOOPBACK_DIR: m.dir }, reject: false, stdio: 'inherit' }),
    execa('stunnel', [join(m.dir, 'c.conf')], { reject: false }),
    execa('stunnel', [join(m.dir, 's.conf')], { reject: false }),
  ];
  await clientRole(m);
  await new Promise((r) => setTimeout(r, 1500));
  const port: Record<string, number> = { native: PORTS.native, stunnel: PORTS.stunnelIn, direct: PORTS.app };
  for (const w of order) {
    if (port[w] === undefined) throw new Error(`unknown path ${w} (native, stunnel, direct)`);
    process.stdout.write(`${w}: ${(await iperf(port[w], seconds)).toFixed(2)} Gbit/s\n`);
  }
  for (const c of children) c.kill();
  rmSync(m.dir, { recursive: true, force: true });
  process.exit(0);
}
