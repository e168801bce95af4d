// Loopback measurement: iperf3 through native HBONE client+server vs stunnel pair vs direct.
import net from 'node:net';
import { execa } from 'execa';
import { mkdirSync, writeFileSync } from 'node:fs';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { loadNativeLib, LineSplitter, parseEvent, encodeHeaders } from '../../agent/src/hbone/native-lib.js';
import { dupCloexec } from '../../agent/src/platform/libc.js';

const TD = 'cluster.local';
const dir = '/tmp/native-wt/certs'; mkdirSync(dir, { recursive: true });
const ca = await BuiltinCa.ephemeral({ trustDomain: TD });
async function leaf(name: string) {
  const identity = `spiffe://${TD}/ns/x/sa/${name}`;
  const k = await generateP256();
  const s = await ca.sign({ csrPem: await createCsr(identity, k.keys), identity, ttlSeconds: 3600 });
  const chain = s.chainPem.join('');
  writeFileSync(`${dir}/${name}.crt`, chain); writeFileSync(`${dir}/${name}.key`, k.keyPem.endsWith('\n') ? k.keyPem : k.keyPem + '\n');
  return { identity, chain, key: k.keyPem };
}
const ROLE = process.env.ROLE ?? 'main';
import { readFileSync } from 'node:fs';
let c: { identity: string; chain: string; key: string }; let s: typeof c; let root: string;
if (ROLE === 'main') {
  writeFileSync(`${dir}/ca.pem`, ca.rootPem);
  c = await leaf('client'); s = await leaf('server');
  writeFileSync(`${dir}/ids.json`, JSON.stringify({ c, s }));
}
({ c, s } = JSON.parse(readFileSync(`${dir}/ids.json`, 'utf8')));
root = readFileSync(`${dir}/ca.pem`, 'utf8');
const lib = loadNativeLib();
const evfd = lib.start();
if (evfd < 0) throw new Error(lib.lastError());
const ctxC = lib.ctxNew(false, c.chain, c.key, root);
const ctxS = lib.ctxNew(true, s.chain, s.key, root);
if (!ctxC || !ctxS) throw new Error(lib.lastError());
const fdOf = (sock: net.Socket): number => { const fd = (sock as unknown as { _handle: { fd: number } })._handle.fd; const d = dupCloexec(fd); sock.destroy(); return d; };
const evsock = new net.Socket({ fd: evfd, readable: true, writable: true });
const split = new LineSplitter();
let session = 0; let up: Promise<void> | undefined; let upResolve: () => void = () => {};
const verbose = process.env.V === '1';
evsock.setEncoding('utf8');
evsock.on('data', (d: string) => {
  for (const line of split.push(d)) {
    const e = parseEvent(line);
    if (verbose) console.error(line);
    if (!e) continue;
    if (e.ev === 'up') upResolve();
    if (e.ev === 'request') {
      const u = net.connect(5201, '127.0.0.1', () => lib.answer(e.stream, 200, fdOf(u)));
      u.on('error', () => lib.answer(e.stream, 503, -1));
    }
  }
});
if (ROLE === 'server') {
  net.createServer({ pauseOnConnect: true }, (sock) => lib.serverSession(ctxS, fdOf(sock), TD)).listen(25008, '127.0.0.1');
  await new Promise(() => undefined);
}
const child = execa(process.execPath, [...process.execArgv, process.argv[1] as string], { env: { ROLE: 'server' }, reject: false, stdio: 'inherit' });
await new Promise((r) => setTimeout(r, 1500));
net.createServer({ pauseOnConnect: true }, async (down) => {
  if (!session) {
    up = new Promise((r) => (upResolve = r));
    const raw = net.connect(25008, '127.0.0.1');
    await new Promise((r) => raw.once('connect', r));
    session = lib.clientSession(ctxC, fdOf(raw), s.identity);
  }
  await up;
  lib.clientStream(session, fdOf(down), '127.0.0.1:5201', encodeHeaders({ forwarded: 'for="127.0.0.1:1"', baggage: 'a=b' }));
}).listen(15209, '127.0.0.1');
const conf = (client: boolean, who: string) => [`foreground = yes`, 'pid =', 'debug = warning', `cert = ${dir}/${who}.crt`, `key = ${dir}/${who}.key`, `CAfile = ${dir}/ca.pem`, 'verifyChain = yes', ...(client ? [] : ['requireCert = yes']), 'sslVersionMin = TLSv1.3', 'sslVersionMax = TLSv1.3', 'ciphersuites = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256', '', client ? '[x]\nclient = yes\naccept = 127.0.0.1:15210\nconnect = 127.0.0.1:25210\n' : '[x]\naccept = 127.0.0.1:25210\nconnect = 127.0.0.1:5201\n'].join('\n');
writeFileSync(`${dir}/c.conf`, conf(true, 'client')); writeFileSync(`${dir}/s.conf`, conf(false, 'server'));
const st1 = execa('stunnel', [`${dir}/c.conf`], { reject: false }); const st2 = execa('stunnel', [`${dir}/s.conf`], { reject: false });
await new Promise((r) => setTimeout(r, 500));
const secs = process.env.SECS ?? '5';
async function iperf(port: number): Promise<number> {
  const srv = execa('iperf3', ['-s', '-1', '-p', '5201'], { reject: false });
  await new Promise((r) => setTimeout(r, 300));
  const r = await execa('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', secs, '-J'], { reject: false });
  await srv;
  try { return JSON.parse(r.stdout).end.sum_received.bits_per_second / 1e9; } catch { console.error(r.stdout.slice(0, 500), r.stderr); return NaN; }
}
const order = (process.env.ORDER ?? "native,stunnel,direct,native,stunnel").split(",");
if (process.env.ECHO) { await new Promise((r) => setTimeout(r, 60000)); }
for (const w of order) {
  const g = await iperf(w === 'native' ? 15209 : w === 'stunnel' ? 15210 : 5201);
  console.log(`${w}: ${g.toFixed(2)} Gbit/s`);
}
st1.kill(); st2.kill(); child.kill();
process.exit(0);
