// Client credentials for the interop tests: a P-256 key and a SPIFFE leaf from a CA (the testbed's shared root or a
// foreign one), written as PEM files that an outside client can load. Uses the agent's own CA and CSR code.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';

export interface ClientCredential {
  identity: string;
  /** The leaf followed by any intermediates (PEM). */
  certPath: string;
  /** PKCS#8 PEM private key. */
  keyPath: string;
  certPem: string;
}

/** Issues `identity` from `ca` (lifetime one hour) and writes `<name>-cert.pem` / `<name>-key.pem` into `dir` (mode 0600). */
export async function issueCredential(ca: BuiltinCa, identity: string, dir: string, name: string): Promise<ClientCredential> {
  const kp = await generateP256();
  const { chainPem } = await ca.sign({ csrPem: await createCsr(identity, kp.keys), identity, ttlSeconds: 3600 });
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const certPath = join(dir, `${name}-cert.pem`);
  const keyPath = join(dir, `${name}-key.pem`);
  const certPem = chainPem.join('');
  await writeFile(certPath, certPem, { mode: 0o600 });
  await writeFile(keyPath, kp.keyPem, { mode: 0o600 });
  return { identity, certPath, keyPath, certPem };
}
