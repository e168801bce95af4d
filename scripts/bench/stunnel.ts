// The reference tunnel of the data-path benchmark: a stunnel4 mutual-TLS 1.3 pair, client in the source pod, server in
// the destination pod, with certificates issued for this run by an in-memory builtin CA; config and keys in the run dir.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Testbed, TestbedPod } from '../../test/testbed/index.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { onCpu } from './cpu.js';

/** One tunnelled service: what the client pod's app dials (127.0.0.1:accept), what the server's stunnel connects to. */
export interface TunnelService {
  name: string;
  /** Port of the stunnel client on 127.0.0.1 in the client pod. */
  clientPort: number;
  /** Port of the stunnel server on the server pod's address. */
  serverPort: number;
  /** The app's port on 127.0.0.1 in the server pod. */
  appPort: number;
}

export interface StunnelPair {
  /** PIDs of the stunnel client (node of the client pod) and server, for CPU accounting. */
  pids: (number | undefined)[];
  /** `stunnel -version` first line, for the report. */
  version: string;
  /** What `openssl s_client` with the client's certificate negotiated with the server ("TLSv1.3, TLS_AES_256_GCM_SHA384"). */
  negotiated: string;
}

/** The same protocol limits as HBONE (agent/src/hbone/tls.ts): TLS 1.3 only, AES-GCM suites. */
const CIPHERSUITES = 'TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256';
const TRUST_DOMAIN = 'cluster.local';

interface Material {
  caPath: string;
  certPath: string;
  keyPath: string;
}

/** A fresh root, and one ECDSA P-256 leaf per end (URI SAN only, like the agents' certificates), written 0600. */
async function issue(dir: string, ends: string[]): Promise<Record<string, Material>> {
  const ca = await BuiltinCa.ephemeral({ trustDomain: TRUST_DOMAIN });
  const caPath = join(dir, 'ca.pem');
  await writeFile(caPath, ca.rootPem, { mode: 0o644 });
  const out: Record<string, Material> = {};
  for (const end of ends) {
    const identity = `spiffe://${TRUST_DOMAIN}/ns/plain/sa/stunnel-${end}`;
    const keys = await generateP256();
    const signed = await ca.sign({ csrPem: await createCsr(identity, keys.keys), identity, ttlSeconds: 3600 });
    const certPath = join(dir, `${end}-cert.pem`);
    const keyPath = join(dir, `${end}-key.pem`);
    await writeFile(certPath, signed.chainPem.join(''), { mode: 0o644 });
    await writeFile(keyPath, keys.keyPem.endsWith('\n') ? keys.keyPem : `${keys.keyPem}\n`, { mode: 0o600 });
    out[end] = { caPath, certPath, keyPath };
  }
  return out;
}

function config(m: Material, client: boolean, services: string[]): string {
  return [
    '; written by scripts/bench/stunnel.ts for one benchmark run',
    'foreground = yes',
    'pid =',
    'syslog = no',
    // warning: no per-connection lines (notice logs 5 per connection); the handshake is checked with openssl s_client.
    'debug = warning',
    `cert = ${m.certPath}`,
    `key = ${m.keyPath}`,
    `CAfile = ${m.caPath}`,
    'verifyChain = yes',
    ...(client ? [] : ['requireCert = yes']),
    'sslVersionMin = TLSv1.3',
    'sslVersionMax = TLSv1.3',
    `ciphersuites = ${CIPHERSUITES}`,
    // stunnel's defaults already set TCP_NODELAY on both its local and remote sockets (`stunnel -sockets`).
    '',
    ...services,
  ].join('\n');
}

/**
 * Starts the pair: the stunnel client in `client`'s pod on 127.0.0.1:clientPort, tunnelling to the stunnel server on
 * `server.ip:serverPort`, which connects to 127.0.0.1:appPort in the server pod. Both run in the foreground as testbed
 * processes (killed at teardown), pinned like the agents when `o.pin`.
 */
export async function startStunnelPair(
  o: { pin: boolean },
  tb: Testbed,
  client: TestbedPod,
  server: TestbedPod,
  services: TunnelService[],
): Promise<StunnelPair> {
  const dir = join(tb.runDir, 'stunnel');
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const m = await issue(dir, ['client', 'server']);
  const mc = m.client;
  const ms = m.server;
  if (mc === undefined || ms === undefined) throw new Error('stunnel: certificates missing');
  const clientConf = join(dir, 'client.conf');
  const serverConf = join(dir, 'server.conf');
  await writeFile(
    clientConf,
    config(mc, true, services.map((s) => `[${s.name}]\nclient = yes\naccept = 127.0.0.1:${s.clientPort}\nconnect = ${server.ip}:${s.serverPort}\n`)),
  );
  await writeFile(
    serverConf,
    config(ms, false, services.map((s) => `[${s.name}]\naccept = ${server.ip}:${s.serverPort}\nconnect = 127.0.0.1:${s.appPort}\n`)),
  );
  const logs = { client: '', server: '' };
  const start = (pod: TestbedPod, conf: string, which: 'client' | 'server'): number | undefined => {
    const sub = pod.spawn(...onCpu(o, pod, 'stunnel', [conf]), { reject: false, all: true, buffer: false });
    sub.all?.on('data', (d: Buffer) => {
      if (logs[which].length < 64 * 1024) logs[which] += d.toString();
    });
    return sub.pid;
  };
  const pids = [start(client, clientConf, 'client'), start(server, serverConf, 'server')];
  try {
    for (const s of services) {
      await server.waitForPort(s.serverPort);
      await client.waitForPort(s.clientPort);
    }
  } catch (err) {
    throw new Error(`stunnel did not start: ${(err as Error).message}\nclient: ${logs.client.slice(-800)}\nserver: ${logs.server.slice(-800)}`, { cause: err });
  }
  const version = (await client.exec('stunnel', ['-version'], { reject: false, all: true })).all;
  return { pids, version: /stunnel \S+/.exec(String(version))?.[0] ?? 'stunnel', negotiated: await checkHandshake(client, server, services[0], mc) };
}

/** Handshakes against the stunnel server: with the client's certificate TLS 1.3 and a verified chain, without one a refusal. */
async function checkHandshake(client: TestbedPod, server: TestbedPod, s: TunnelService | undefined, m: Material): Promise<string> {
  if (s === undefined) return 'no service';
  const r = await client.exec(
    'openssl',
    ['s_client', '-brief', '-connect', `${server.ip}:${s.serverPort}`, '-cert', m.certPath, '-key', m.keyPath, '-CAfile', m.caPath],
    { reject: false, all: true, input: '', timeout: 10_000 },
  );
  const out = String(r.all);
  const proto = /Protocol version: (\S+)/.exec(out)?.[1];
  const suite = /Ciphersuite: (\S+)/.exec(out)?.[1];
  if (proto !== 'TLSv1.3' || !/Verification: OK/.test(out)) throw new Error(`stunnel handshake check failed:\n${out.slice(0, 1500)}`);
  // Without a client certificate the server must refuse (TLS 1.3 sends that alert after the client's Finished: keep reading).
  const anon = await client.exec(
    'sh',
    ['-c', `sleep 0.3 | openssl s_client -brief -connect ${server.ip}:${s.serverPort} -CAfile ${m.caPath}`],
    { reject: false, all: true, timeout: 10_000 },
  );
  if (!/certificate required/.test(String(anon.all))) throw new Error(`stunnel accepted a client without a certificate:\n${String(anon.all).slice(0, 1500)}`);
  return `${proto}, ${suite ?? 'unknown suite'}`;
}
