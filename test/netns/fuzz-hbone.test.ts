// Fuzz pass of random and mutated HTTP/2 frames against an enrolled pod's 15008 on a live 2-node testbed (issue 11):
// test/interop/hbone_fuzz.py, seeded; afterwards both agents are the same processes, no pod record is lost, ADD and mesh work.
// Seed and size: AMBIENT_FUZZ_SEED, AMBIENT_FUZZ_ITERATIONS (connections).
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { issueCredential } from '../interop/certs.js';
import { DEBIAN_PYTHON } from '../interop/hbone-client.js';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { assertNodeSurvived, assertStillServing, fuzzIterations, fuzzSeed, snapshotNode } from './fuzz-common.js';
import { AMBIENT, ask, startEcho } from './helpers.js';

const FUZZ_PY = fileURLToPath(new URL('../interop/hbone_fuzz.py', import.meta.url));
/** Connections in CI (each 5-200 frames, some floods of thousands); AMBIENT_FUZZ_ITERATIONS for more. */
const CI_CONNECTIONS = 1200;

interface FuzzReport {
  seed: number;
  error: string | null;
  fuzz_seconds?: number;
  final_check_ok?: boolean;
  final_check_status?: string | null;
  counts: Record<string, number>;
}

netnsTest.serial(`fuzz: random and mutated HTTP/2 frames against 15008 crash nothing and lose no pod`, async (t) => {
  const seed = fuzzSeed();
  const connections = fuzzIterations(CI_CONNECTIONS);
  // The fuzzer stops starting connections after this many seconds, whatever was asked: CI stays bounded.
  const maxSeconds = process.env.AMBIENT_FUZZ_ITERATIONS ? 3600 : 25;
  t.log(`seed ${seed} (AMBIENT_FUZZ_SEED=${seed} replays it), ${connections} connections`);
  t.timeout((maxSeconds + 120) * 1000);
  const tb = await withTestbed(t, { nodes: 2 });
  await tb.setNamespace('app', AMBIENT);
  await tb.setNamespace('legacy', {});
  const [productpage, sleep, notsleep, attacker] = await tb.addPods([
    { node: 1, namespace: 'app', name: 'productpage', serviceAccount: 'productpage' },
    { node: 0, namespace: 'app', name: 'sleep', serviceAccount: 'sleep' },
    { node: 1, namespace: 'app', name: 'notsleep', serviceAccount: 'notsleep' },
    { node: 0, namespace: 'legacy', name: 'attacker', serviceAccount: 'attacker' },
  ]);
  if (!productpage || !sleep || !notsleep || !attacker) throw new Error('pods missing');
  await startEcho(productpage, 9080);
  await startEcho(notsleep, 9080);
  t.true((await ask(sleep, productpage.ip, 9080, 'warm')).ok, 'the mesh works before the pass');
  const ca = await BuiltinCa.open(tb.caDir, { trustDomain: 'cluster.local' });
  const cred = await issueCredential(ca, 'spiffe://cluster.local/ns/legacy/sa/attacker', join(tb.runDir, 'fuzz'), 'fuzzer');
  const before = [await snapshotNode(tb, 0), await snapshotNode(tb, 1)];

  const started = Date.now();
  const r = await attacker.exec(DEBIAN_PYTHON, ['-I', FUZZ_PY, '--connect', `${productpage.ip}:15008`, '--ca', join(tb.caDir, 'root-cert.pem'),
    '--cert', cred.certPath, '--key', cred.keyPath, '--authority', `${productpage.ip}:9080`, '--seed', String(seed),
    '--connections', String(connections), '--max-seconds', String(maxSeconds)], { reject: false, timeout: (maxSeconds + 60) * 1000 });
  const line = String(r.stdout).trim().split('\n').pop() ?? '';
  let report: FuzzReport;
  try {
    report = JSON.parse(line) as FuzzReport;
  } catch {
    throw new Error(`hbone_fuzz.py printed no JSON line (exit ${String(r.exitCode)}): ${String(r.stdout)}${String(r.stderr)}`);
  }
  t.log(`fuzz pass: ${Date.now() - started} ms, ${JSON.stringify(report)}`);
  const c = report.counts;
  t.is(report.error, null, 'the fuzzer ran to its end');
  t.is(c.fuzzer_errors ?? 0, 0, 'the fuzzer itself raised nothing');
  t.true((c.connections ?? 0) >= Math.min(connections, 100), `most connections were made (${c.connections ?? 0})`);
  t.true((c.frames_sent ?? 0) > 0 && (c.tls_connections ?? 0) > 0, 'frames went out over mutual TLS');
  t.is(c.no_cert_served ?? 0, 0, 'no connection without a client certificate got past the handshake');
  t.true(report.final_check_ok === true, `a well-formed CONNECT on a fresh connection still works (status ${String(report.final_check_status)})`);

  for (const node of [0, 1]) await assertNodeSurvived(t, tb, node, before[node]!, 'hbone fuzz');
  await assertStillServing(t, tb, { node: 1, namespace: 'app', name: 'fresh', client: sleep, server: notsleep, port: 9080, label: 'hbone-fuzz' });
  t.log(`counts for the README: ${c.connections ?? 0} connections (${c.tls_connections ?? 0} with a certificate), ${c.frames_sent ?? 0} frames, `
    + `${c.bytes_sent ?? 0} bytes, crashes 0, lost pod records 0`);
});
