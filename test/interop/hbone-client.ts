// Runs the Python h2 HBONE client (hbone_client.py, on Debian's python3-h2) inside a testbed pod and parses its JSON line.
// The interop tests' only way of speaking HBONE with code nobody here wrote; no ava import, so scripts may use it too.
import { fileURLToPath } from 'node:url';
import type { TestbedPod } from '../testbed/index.js';
import type { ClientCredential } from './certs.js';

/** Debian's interpreter: the python3 on PATH may be a pyenv build without Debian's python3-h2. */
export const DEBIAN_PYTHON = '/usr/bin/python3';
export const HBONE_CLIENT_PY = fileURLToPath(new URL('./hbone_client.py', import.meta.url));

export interface HboneStreamResult {
  authority: string;
  /** The CONNECT response status, or null when none came. */
  status: number | null;
  received: string;
  /** RST_STREAM error code, or null. */
  reset: number | null;
}

export interface HboneClientResult {
  /** The first stream's status, received text and reset code. */
  status: number | null;
  received: string;
  reset: number | null;
  /** Why the client stopped early (TLS alert, reset, EOF, timeout, identity mismatch), or null. */
  error: string | null;
  streams: HboneStreamResult[];
  /** The server's GOAWAY error code, or null. */
  goaway: number | null;
  /** The last stream id the GOAWAY says the server processed, or null. */
  goaway_last_stream: number | null;
  /** URI SANs of the server's verified certificate (empty if the handshake did not get that far). */
  peer_uri_sans: string[];
  tls_version: string | null;
  cipher: string | null;
  alpn: string | null;
}

export interface HboneClientOptions {
  /** ip:port to dial (the destination pod's 15008). */
  connect: string;
  /** One CONNECT stream per authority, all on the same connection. */
  authority: string | readonly string[];
  /** PEM roots the client trusts for the server. */
  caPath: string;
  /** The client certificate; none when omitted. */
  credential?: ClientCredential;
  /** The client refuses a server whose URI SANs do not include this. */
  serverIdentity?: string;
  send?: string;
  expect?: string;
  timeoutSeconds?: number;
  tlsVersion?: '1.2' | '1.3';
  alpn?: string;
}

/** Runs one client in `pod`; the result's fields say what happened (the client itself never fails). */
export async function runHboneClient(pod: TestbedPod, o: HboneClientOptions): Promise<HboneClientResult> {
  const args = [HBONE_CLIENT_PY, '--connect', o.connect, '--ca', o.caPath];
  for (const a of typeof o.authority === 'string' ? [o.authority] : o.authority) args.push('--authority', a);
  if (o.credential) args.push('--cert', o.credential.certPath, '--key', o.credential.keyPath);
  if (o.serverIdentity !== undefined) args.push('--server-identity', o.serverIdentity);
  if (o.send !== undefined) args.push('--send', o.send);
  if (o.expect !== undefined) args.push('--expect', o.expect);
  if (o.tlsVersion !== undefined) args.push('--tls-version', o.tlsVersion);
  if (o.alpn !== undefined) args.push('--alpn', o.alpn);
  const timeoutSeconds = o.timeoutSeconds ?? 5;
  args.push('--timeout', String(timeoutSeconds));
  // -I: isolated mode, so no PYTHON* variable or user site of the test environment leaks into Debian's interpreter.
  const r = await pod.exec(DEBIAN_PYTHON, ['-I', ...args], { reject: false, timeout: (timeoutSeconds + 10) * 1000 });
  const line = String(r.stdout).trim().split('\n').pop() ?? '';
  let parsed: unknown;
  try {
    parsed = JSON.parse(line);
  } catch {
    throw new Error(`hbone_client.py printed no JSON line (exit ${r.exitCode}): ${String(r.stdout)}${String(r.stderr)}`);
  }
  if (!isResult(parsed)) throw new Error(`hbone_client.py printed an unexpected object: ${line}`);
  return parsed;
}

function isResult(v: unknown): v is HboneClientResult {
  if (typeof v !== 'object' || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    (o.status === null || typeof o.status === 'number') &&
    typeof o.received === 'string' &&
    (o.error === null || typeof o.error === 'string') &&
    Array.isArray(o.streams) &&
    Array.isArray(o.peer_uri_sans)
  );
}
