// Reads a kubeconfig's text (pure: no file is opened here) into what the client needs for the current context: server,
// TLS material, one way to authenticate. What it does not implement (exec plugins, auth providers, proxies) is handed to
// @kubernetes/client-node instead; anything broken is a KubeApiError naming the file and the field, checked as kubectl does.
import { dirname, isAbsolute, resolve } from 'node:path';
import { formatHostPort } from '../../protocol/address.js';
import { parse as parseYaml } from 'yaml';
import { KubeApiError } from './errors.js';

/** A PEM block from a file (path made absolute against the kubeconfig's folder) or inline; `field` names it in errors. */
export type PemSource = { field: string; file: string } | { field: string; pem: string };

/** How requests authenticate (a client certificate, if any, is in the TLS settings and combines with any of these). */
export type KubeAuth =
  | { kind: 'none' }
  | { kind: 'token'; token: string }
  /** Re-read when a minute old, so rotated (projected) tokens are picked up, as client-go does. */
  | { kind: 'tokenFile'; field: string; file: string }
  | { kind: 'basic'; username: string; password: string };

/** Everything needed to reach one API server, before any file is read. */
export interface KubeAccessSpec {
  /** What errors name: `kubeconfig <path>` or `in-cluster config`. */
  origin: string;
  /** Scheme, host and port (and a path prefix, if any), without a trailing slash. */
  server: string;
  ca?: PemSource;
  clientCert?: PemSource;
  clientKey?: PemSource;
  insecureSkipTlsVerify: boolean;
  /** The name checked against the server's certificate (and sent as SNI) instead of the server's host. */
  tlsServerName?: string;
  auth: KubeAuth;
  /** The `as` user (Impersonate-User header). */
  impersonateUser?: string;
}

/** A kubeconfig this module can serve, or the field that needs @kubernetes/client-node. */
export type KubeconfigPlan = { kind: 'native'; spec: KubeAccessSpec } | { kind: 'client-node'; reason: string };

type Mapping = Record<string, unknown>;

const isMapping = (v: unknown): v is Mapping => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Fields of `user` that only client-node implements. */
const CLIENT_NODE_USER_FIELDS = ['exec', 'auth-provider'] as const;
/** Impersonation beyond the user name: neither this reader nor client-node sends it, so it is refused, not dropped. */
const UNSUPPORTED_USER_FIELDS = ['as-groups', 'as-uid', 'as-user-extra'] as const;

/** Pure: the current context of a kubeconfig's text. `file` is its path (relative file names resolve against its folder). */
export function parseKubeconfig(text: string, file: string): KubeconfigPlan {
  const origin = `kubeconfig ${file}`;
  const fail = (what: string): never => {
    throw new KubeApiError(`${origin}: ${what}`);
  };
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (err) {
    throw new KubeApiError(`${origin} is not valid YAML`, undefined, { cause: err });
  }
  if (!isMapping(doc)) return fail('not a mapping (apiVersion: v1, kind: Config)');
  const contextName = doc['current-context'];
  if (typeof contextName !== 'string' || !contextName) return fail('current-context is not set');
  const context = namedEntry(doc, 'contexts', 'context', contextName, origin, 'current-context')?.value;
  if (!context) return fail(`current-context "${contextName}" is not in contexts`);
  const ctxField = `contexts["${contextName}"].context`;

  const clusterName = context.cluster;
  if (typeof clusterName !== 'string' || !clusterName) return fail(`${ctxField}.cluster is not set`);
  const cluster = namedEntry(doc, 'clusters', 'cluster', clusterName, origin, `${ctxField}.cluster`);
  if (!cluster) return fail(`cluster "${clusterName}" (${ctxField}.cluster) is not in clusters`);
  const c = cluster.value;
  const cf = `clusters["${clusterName}"].cluster`;
  if (c['proxy-url'] !== undefined) return { kind: 'client-node', reason: `${cf}.proxy-url` };
  const str = (m: Mapping, field: string, where: string): string | undefined => {
    const v = m[field];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string') return fail(`${where}.${field} must be a string`);
    return v;
  };
  const server = str(c, 'server', cf);
  if (!server) return fail(`${cf}.server is not set`);
  let url: URL;
  try {
    url = new URL(server);
  } catch {
    return fail(`${cf}.server ${JSON.stringify(server)} is not a URL`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return fail(`${cf}.server must be an https:// URL, not ${url.protocol}`);
  const insecure = c['insecure-skip-tls-verify'];
  if (insecure !== undefined && typeof insecure !== 'boolean') return fail(`${cf}.insecure-skip-tls-verify must be true or false`);
  if (url.protocol === 'http:' && insecure !== true) return fail(`${cf}.server is plain http:// without insecure-skip-tls-verify: true`);
  const dir = dirname(resolve(file));
  const pem = (m: Mapping, where: string, fileField: string, dataField: string): PemSource | undefined => {
    const path = str(m, fileField, where);
    const data = str(m, dataField, where);
    if (path && data) return fail(`${where}.${fileField} and ${where}.${dataField} are both set; keep one`);
    if (path) return { field: `${where}.${fileField}`, file: isAbsolute(path) ? path : resolve(dir, path) };
    if (data) return { field: `${where}.${dataField}`, pem: decodePemData(data, `${origin}: ${where}.${dataField}`) };
    return undefined;
  };
  const ca = pem(c, cf, 'certificate-authority', 'certificate-authority-data');
  if (insecure === true && ca) return fail(`${cf}.insecure-skip-tls-verify is true and a certificate authority is set; keep one`);
  const tlsServerName = str(c, 'tls-server-name', cf);

  const spec: KubeAccessSpec = {
    origin,
    server: server.replace(/\/+$/, ''),
    insecureSkipTlsVerify: insecure === true,
    auth: { kind: 'none' },
    ...(ca ? { ca } : {}),
    ...(tlsServerName ? { tlsServerName } : {}),
  };
  const userName = context.user;
  if (userName === undefined || userName === null || userName === '') return { kind: 'native', spec };
  if (typeof userName !== 'string') return fail(`${ctxField}.user must be a string`);
  const user = namedEntry(doc, 'users', 'user', userName, origin, `${ctxField}.user`);
  if (!user) return fail(`user "${userName}" (${ctxField}.user) is not in users`);
  const u = user.value;
  const uf = `users["${userName}"].user`;
  for (const field of CLIENT_NODE_USER_FIELDS) if (u[field] !== undefined && u[field] !== null) return { kind: 'client-node', reason: `${uf}.${field}` };
  for (const field of UNSUPPORTED_USER_FIELDS) if (u[field] !== undefined && u[field] !== null) return fail(`${uf}.${field} is not supported`);

  const clientCert = pem(u, uf, 'client-certificate', 'client-certificate-data');
  const clientKey = pem(u, uf, 'client-key', 'client-key-data');
  if (clientCert && !clientKey) return fail(`${uf} has a client certificate but no client-key or client-key-data`);
  if (clientKey && !clientCert) return fail(`${uf} has a client key but no client-certificate or client-certificate-data`);
  if (clientCert && clientKey) Object.assign(spec, { clientCert, clientKey });

  const token = str(u, 'token', uf);
  // client-go spells it tokenFile; client-node reads token-file.
  const tokenFileField = u.tokenFile !== undefined ? 'tokenFile' : 'token-file';
  const tokenFile = str(u, tokenFileField, uf);
  const username = str(u, 'username', uf);
  const password = str(u, 'password', uf);
  if ((token || tokenFile) && (username || password)) return fail(`${uf} has both a token and a username/password; keep one`);
  if (token) spec.auth = { kind: 'token', token: token.trim() };
  else if (tokenFile) spec.auth = { kind: 'tokenFile', field: `${uf}.${tokenFileField}`, file: isAbsolute(tokenFile) ? tokenFile : resolve(dir, tokenFile) };
  else if (username || password) {
    if (!username) return fail(`${uf}.password is set without username`);
    spec.auth = { kind: 'basic', username, password: password ?? '' };
  }
  const as = str(u, 'as', uf);
  if (as) spec.impersonateUser = as;
  return { kind: 'native', spec };
}

/** Pure: the pod's service account (`dir` holds token and ca.crt) and the API server from the service env vars. */
export function inClusterSpec(env: Record<string, string | undefined>, dir: string): KubeAccessSpec {
  const host = env.KUBERNETES_SERVICE_HOST;
  const port = env.KUBERNETES_SERVICE_PORT || '443';
  if (!host) throw new KubeApiError('in-cluster config needs KUBERNETES_SERVICE_HOST (is the agent running in a pod?); set kubeconfig otherwise');
  if (!/^\d{1,5}$/.test(port)) throw new KubeApiError(`in-cluster config: KUBERNETES_SERVICE_PORT ${JSON.stringify(port)} is not a port`);
  return {
    origin: 'in-cluster config',
    server: `https://${formatHostPort(host, port)}`,
    ca: { field: 'the service-account CA', file: `${dir}/ca.crt` },
    insecureSkipTlsVerify: false,
    auth: { kind: 'tokenFile', field: 'the service-account token', file: `${dir}/token` },
  };
}

/** Pure: the Authorization header for a token or user name and password (none for 'none'; a token file is read first). */
export function authorizationHeader(auth: { kind: 'none' } | { kind: 'token'; token: string } | { kind: 'basic'; username: string; password: string }): string | undefined {
  if (auth.kind === 'token') return `Bearer ${auth.token}`;
  if (auth.kind === 'basic') return `Basic ${Buffer.from(`${auth.username}:${auth.password}`).toString('base64')}`;
  return undefined;
}

/** The entry `name` of the list `listKey` (each `{ name, <valueKey>: {...} }`), or undefined. */
function namedEntry(doc: Mapping, listKey: string, valueKey: string, name: string, origin: string, referrer: string): { value: Mapping } | undefined {
  const list = doc[listKey];
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list)) throw new KubeApiError(`${origin}: ${listKey} must be a list`);
  const entry: unknown = list.find((e: unknown) => isMapping(e) && e.name === name);
  if (!isMapping(entry)) return undefined;
  const value = entry[valueKey];
  if (!isMapping(value)) throw new KubeApiError(`${origin}: ${listKey}["${name}"].${valueKey} (named by ${referrer}) must be a mapping`);
  return { value };
}

/** Pure: base64 PEM data from a kubeconfig, decoded; `what` names it in the error. */
function decodePemData(data: string, what: string): string {
  const pem = Buffer.from(data, 'base64').toString('utf8');
  if (!pem.includes('-----BEGIN ')) throw new KubeApiError(`${what} is not base64-encoded PEM`);
  return pem;
}
