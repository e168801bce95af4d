// Turns credentials (a kubeconfig file or the pod's service account) into what each request needs: the node:https pool
// with the cluster's TLS settings and the headers (Authorization, Impersonate-User). Files are read here, once, except a
// token file (re-read when a minute old). Only kubeconfigs needing exec plugins, auth providers or proxies load client-node.
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createSecureContext } from 'node:tls';
import { KubeApiError } from './errors.js';
import { type KubeHttpRequest, type KubeHttpResponse, type KubeTlsOptions, nodeHttpTransport } from './http-transport.js';
import { authorizationHeader, inClusterSpec, type KubeAccessSpec, type KubeAuth, parseKubeconfig, type PemSource } from './kubeconfig.js';

export const SERVICE_ACCOUNT_DIR = '/var/run/secrets/kubernetes.io/serviceaccount';

/** Where the credentials come from: a kubeconfig file, or the pod's service account (token + CA) and the service env vars. */
export type KubeCredentials =
  | { kubeconfig: string }
  | { inCluster: { env: Record<string, string | undefined>; dir?: string } };

/** How the client reaches the API server: the base URL, then per request the headers and the connection pool. */
export interface KubeAccess {
  readonly server: string;
  /** Which implementation serves these credentials (client-node only for what the reader does not implement). */
  readonly via: 'kubeconfig-reader' | 'client-node';
  /** The credentials' headers for one request (Authorization, Impersonate-User); a token file is re-read when due. */
  headers(url: URL, method: string): Promise<Record<string, string>>;
  /** Sends one request (its headers from `headers`) over the credentials' one connection pool. */
  send(request: KubeHttpRequest): Promise<KubeHttpResponse>;
  close(): Promise<void>;
}

/** How old a token file's content may get before it is read again (client-go's and client-node's minute). */
export const TOKEN_FILE_MAX_AGE_MS = 60_000;

/** Loads the credentials; throws a KubeApiError naming the file and the field that is missing or broken. */
export async function loadKubeAccess(creds: KubeCredentials, opts: { now?: () => number } = {}): Promise<KubeAccess> {
  if ('inCluster' in creds) return nativeAccess(inClusterSpec(creds.inCluster.env, creds.inCluster.dir ?? SERVICE_ACCOUNT_DIR), opts.now);
  let text: string;
  try {
    text = readFileSync(creds.kubeconfig, 'utf8');
  } catch (err) {
    throw new KubeApiError(`cannot load kubeconfig ${creds.kubeconfig}`, undefined, { cause: err });
  }
  const plan = parseKubeconfig(text, creds.kubeconfig);
  if (plan.kind === 'native') return nativeAccess(plan.spec, opts.now);
  const { clientNodeAccess } = await import('./client-node-access.js');
  return clientNodeAccess(creds.kubeconfig, plan.reason);
}

async function nativeAccess(spec: KubeAccessSpec, now: () => number = Date.now): Promise<KubeAccess> {
  // The token first: a missing service-account directory is reported as its token, the thing an operator looks for.
  const token = spec.auth.kind === 'tokenFile' ? await TokenFile.open(spec.auth, spec.origin, now) : undefined;
  const staticAuth = spec.auth.kind === 'tokenFile' ? undefined : authorizationHeader(spec.auth);
  const ca = spec.ca && readPem(spec.ca, spec.origin);
  const cert = spec.clientCert && readPem(spec.clientCert, spec.origin);
  const key = spec.clientKey && readPem(spec.clientKey, spec.origin);
  checkTlsMaterial(spec, { ca, cert, key });
  const tls: KubeTlsOptions = {
    ...(ca !== undefined ? { ca } : {}),
    ...(cert !== undefined && key !== undefined ? { cert, key } : {}),
    // Unset otherwise, so NODE_TLS_REJECT_UNAUTHORIZED keeps its meaning (as with client-node).
    ...(spec.insecureSkipTlsVerify ? { rejectUnauthorized: false as const } : {}),
    ...(spec.tlsServerName ? { servername: spec.tlsServerName } : {}),
  };
  const transport = nodeHttpTransport(new URL(spec.server), tls);
  return {
    server: spec.server,
    via: 'kubeconfig-reader',
    async headers() {
      const headers: Record<string, string> = {};
      const authorization = token ? `Bearer ${await token.current()}` : staticAuth;
      if (authorization) headers.authorization = authorization;
      if (spec.impersonateUser) headers['impersonate-user'] = spec.impersonateUser;
      return headers;
    },
    send: (request) => transport.send(request),
    close: () => transport.close(),
  };
}

/**
 * A bearer token kept in a file (a projected service-account token is rotated by the kubelet): read at load, where a
 * failure is fatal, then again once the content is a minute old; a failed re-read keeps the previous token.
 */
export class TokenFile {
  private constructor(private readonly source: Extract<KubeAuth, { kind: 'tokenFile' }>, private readonly now: () => number, private token: string, private readAt: number) {}

  static async open(source: Extract<KubeAuth, { kind: 'tokenFile' }>, origin: string, now: () => number): Promise<TokenFile> {
    let text: string;
    try {
      text = await readFile(source.file, 'utf8');
    } catch (err) {
      throw new KubeApiError(`${origin}: cannot read ${source.file} (${source.field})`, undefined, { cause: err });
    }
    const token = text.trim();
    if (!token) throw new KubeApiError(`${origin}: ${source.file} (${source.field}) is empty`);
    return new TokenFile(source, now, token, now());
  }

  /** The token, re-read first when the last read is over a minute old. */
  async current(): Promise<string> {
    if (this.now() - this.readAt <= TOKEN_FILE_MAX_AGE_MS) return this.token;
    this.readAt = this.now();
    const text = await readFile(this.source.file, 'utf8').catch(() => '');
    if (text.trim()) this.token = text.trim();
    return this.token;
  }
}

function readPem(source: PemSource, origin: string): string {
  if ('pem' in source) return source.pem;
  try {
    return readFileSync(source.file, 'utf8');
  } catch (err) {
    throw new KubeApiError(`${origin}: cannot read ${source.file} (${source.field})`, undefined, { cause: err });
  }
}

/** Node accepts a CA that is not a certificate without a word, and reports a bad key only at the first connection. */
function checkTlsMaterial(spec: KubeAccessSpec, pems: { ca: string | undefined; cert: string | undefined; key: string | undefined }): void {
  if (pems.ca !== undefined && spec.ca) {
    try {
      new X509Certificate(pems.ca);
    } catch (err) {
      throw new KubeApiError(`${spec.origin}: ${spec.ca.field} is not a PEM certificate`, undefined, { cause: err });
    }
  }
  if (pems.cert !== undefined && pems.key !== undefined && spec.clientCert && spec.clientKey) {
    try {
      createSecureContext({ cert: pems.cert, key: pems.key });
    } catch (err) {
      throw new KubeApiError(`${spec.origin}: ${spec.clientCert.field} and ${spec.clientKey.field} are not a matching PEM certificate and key`, undefined, { cause: err });
    }
  }
}
