// The kubeconfig reader and credentials (agent/src/workload/kube/kubeconfig.ts, credentials.ts): the pure plan for each
// kind of kubeconfig and its errors, then each kind against the fake API server over HTTPS, cross-checked with kubectl.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { chmodSync, mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { KubeApiError, KubeClient, loadKubeAccess } from '../../agent/src/workload/kube/client.js';
import { TOKEN_FILE_MAX_AGE_MS } from '../../agent/src/workload/kube/credentials.js';
import { authorizationHeader, inClusterSpec, parseKubeconfig } from '../../agent/src/workload/kube/kubeconfig.js';
import { FakeKubeApi, makeClientCert, makeTestTls, type TestTls } from '../fixtures/fake-kube-api.js';

const KUBECTL = await execa('sh', ['-c', 'command -v kubectl'], { reject: false }).then((r) => (r.exitCode === 0 ? r.stdout.trim() : undefined));

const b64 = (s: string): string => Buffer.from(s).toString('base64');
const PEM = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';

/** A kubeconfig's text with one context `c` joining cluster `k` and user `u` (undefined user: no user in the context). */
function kubeconfig(cluster: Record<string, unknown>, user?: Record<string, unknown>): string {
  return stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
    clusters: [{ name: 'k', cluster }],
    contexts: [{ name: 'c', context: { cluster: 'k', ...(user ? { user: 'u' } : {}) } }],
    ...(user ? { users: [{ name: 'u', user }] } : {}),
  });
}

const FILE = '/etc/kube/config';
const SERVER = { server: 'https://10.0.0.1:6443/' };

test('plan: token, token files (both spellings, relative to the kubeconfig), user and password, impersonation', (t) => {
  const plan = (user: Record<string, unknown>): unknown => parseKubeconfig(kubeconfig({ ...SERVER, 'insecure-skip-tls-verify': true }, user), FILE);
  t.like(plan({ token: 'abc\n' }), { kind: 'native', spec: { origin: `kubeconfig ${FILE}`, server: 'https://10.0.0.1:6443', insecureSkipTlsVerify: true, auth: { kind: 'token', token: 'abc' } } });
  t.like(plan({ tokenFile: 'tok' }), { spec: { auth: { kind: 'tokenFile', file: '/etc/kube/tok', field: 'users["u"].user.tokenFile' } } });
  t.like(plan({ 'token-file': '/abs/tok' }), { spec: { auth: { kind: 'tokenFile', file: '/abs/tok' } } });
  t.like(plan({ token: 'abc', tokenFile: 'tok' }), { spec: { auth: { kind: 'token', token: 'abc' } } });
  t.like(plan({ username: 'admin', password: 'pw', as: 'someone' }), { spec: { auth: { kind: 'basic', username: 'admin', password: 'pw' }, impersonateUser: 'someone' } });
  t.like(parseKubeconfig(kubeconfig(SERVER), FILE), { kind: 'native', spec: { auth: { kind: 'none' }, insecureSkipTlsVerify: false } });
  t.is(authorizationHeader({ kind: 'basic', username: 'admin', password: 'pw' }), `Basic ${b64('admin:pw')}`);
  t.is(authorizationHeader({ kind: 'token', token: 'abc' }), 'Bearer abc');
  t.is(authorizationHeader({ kind: 'none' }), undefined);
});

test('plan: CA and client certificate from files (relative to the kubeconfig) or inline data; TLS server name', (t) => {
  t.like(parseKubeconfig(kubeconfig({ ...SERVER, 'certificate-authority': 'ca.crt', 'tls-server-name': 'api.local' }, { 'client-certificate': '/pki/c.crt', 'client-key': 'c.key' }), FILE), {
    spec: {
      ca: { field: 'clusters["k"].cluster.certificate-authority', file: '/etc/kube/ca.crt' },
      clientCert: { file: '/pki/c.crt' }, clientKey: { field: 'users["u"].user.client-key', file: '/etc/kube/c.key' }, tlsServerName: 'api.local',
    },
  });
  t.like(parseKubeconfig(kubeconfig({ ...SERVER, 'certificate-authority-data': b64(PEM) }, { 'client-certificate-data': b64(PEM), 'client-key-data': b64('-----BEGIN PRIVATE KEY-----\n') }), FILE), {
    spec: { ca: { pem: PEM }, clientCert: { pem: PEM, field: 'users["u"].user.client-certificate-data' }, clientKey: { pem: '-----BEGIN PRIVATE KEY-----\n' } },
  });
});

test('plan: exec plugins, auth providers and proxies go to client-node, naming the field', (t) => {
  t.deepEqual(parseKubeconfig(kubeconfig(SERVER, { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: 'x' } }), FILE), { kind: 'client-node', reason: 'users["u"].user.exec' });
  t.deepEqual(parseKubeconfig(kubeconfig(SERVER, { 'auth-provider': { name: 'oidc' } }), FILE), { kind: 'client-node', reason: 'users["u"].user.auth-provider' });
  t.deepEqual(parseKubeconfig(kubeconfig({ ...SERVER, 'proxy-url': 'http://proxy:3128' }, { token: 'a' }), FILE), { kind: 'client-node', reason: 'clusters["k"].cluster.proxy-url' });
});

const BROKEN: [string, string, RegExp][] = [
  ['not YAML', 'a: [', /is not valid YAML/],
  ['not a mapping', '- a\n', /not a mapping/],
  ['no current-context', stringify({ clusters: [] }), /current-context is not set/],
  ['an unknown current-context', kubeconfig(SERVER).replace('current-context: c', 'current-context: other'), /current-context "other" is not in contexts/],
  ['an unknown cluster', kubeconfig(SERVER).replace('cluster: k', 'cluster: gone'), /cluster "gone" \(contexts\["c"\]\.context\.cluster\) is not in clusters/],
  ['no server', kubeconfig({ 'insecure-skip-tls-verify': true }), /clusters\["k"\]\.cluster\.server is not set/],
  ['a server that is not a URL', kubeconfig({ server: '10.0.0.1:6443' }), /clusters\["k"\]\.cluster\.server .* is not a URL|must be an https/],
  ['plain http without the insecure flag', kubeconfig({ server: 'http://10.0.0.1' }), /plain http:\/\/ without insecure-skip-tls-verify/],
  ['a CA file and CA data', kubeconfig({ ...SERVER, 'certificate-authority': 'a', 'certificate-authority-data': b64(PEM) }), /certificate-authority and .*certificate-authority-data are both set/],
  ['a CA and the insecure flag', kubeconfig({ ...SERVER, 'certificate-authority': 'a', 'insecure-skip-tls-verify': true }), /insecure-skip-tls-verify is true and a certificate authority is set/],
  ['CA data that is not PEM', kubeconfig({ ...SERVER, 'certificate-authority-data': b64('hello') }), /clusters\["k"\]\.cluster\.certificate-authority-data is not base64-encoded PEM/],
  ['a client certificate without a key', kubeconfig(SERVER, { 'client-certificate': 'c.crt' }), /users\["u"\]\.user has a client certificate but no client-key/],
  ['a token and a password', kubeconfig(SERVER, { token: 'a', username: 'b', password: 'c' }), /both a token and a username\/password/],
  ['a token that is not a string', kubeconfig(SERVER, { token: 5 }), /users\["u"\]\.user\.token must be a string/],
  ['group impersonation', kubeconfig(SERVER, { token: 'a', 'as-groups': ['x'] }), /users\["u"\]\.user\.as-groups is not supported/],
  ['an unknown user', kubeconfig(SERVER, { token: 'a' }).replace('- name: u', '- name: v'), /user "u" \(contexts\["c"\]\.context\.user\) is not in users/],
];
for (const [what, text, message] of BROKEN) {
  test(`plan: a kubeconfig with ${what} is a KubeApiError naming the file and field`, (t) => {
    const err = t.throws(() => parseKubeconfig(text, FILE), { instanceOf: KubeApiError, message });
    t.true(err?.message.startsWith(`kubeconfig ${FILE}`));
  });
}

test('plan: in-cluster server from the service env vars (IPv6 in brackets, port 443 by default), token and CA from the directory', (t) => {
  t.like(inClusterSpec({ KUBERNETES_SERVICE_HOST: 'fd00::1', KUBERNETES_SERVICE_PORT: '6443' }, '/sa'), {
    origin: 'in-cluster config', server: 'https://[fd00::1]:6443', ca: { file: '/sa/ca.crt' }, auth: { kind: 'tokenFile', file: '/sa/token' },
  });
  t.is(inClusterSpec({ KUBERNETES_SERVICE_HOST: '10.96.0.1' }, '/sa').server, 'https://10.96.0.1:443');
  t.throws(() => inClusterSpec({}, '/sa'), { instanceOf: KubeApiError, message: /KUBERNETES_SERVICE_HOST/ });
  t.throws(() => inClusterSpec({ KUBERNETES_SERVICE_HOST: 'h', KUBERNETES_SERVICE_PORT: 'https' }, '/sa'), { instanceOf: KubeApiError, message: /KUBERNETES_SERVICE_PORT/ });
});

test('a token file is re-read once a minute old; a failed re-read keeps the token', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'kube-tokfile-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), 'first\n');
  writeFileSync(join(dir, 'ca.crt'), makeTls(t).ca);
  let now = 1_000_000;
  const access = await loadKubeAccess({ inCluster: { env: { KUBERNETES_SERVICE_HOST: '127.0.0.1' }, dir } }, { now: () => now });
  t.teardown(() => access.close());
  t.is(access.via, 'kubeconfig-reader');
  const auth = async (): Promise<string | undefined> => (await access.headers(new URL(access.server), 'GET')).authorization;
  t.is(await auth(), 'Bearer first');
  writeFileSync(join(dir, 'token'), 'second');
  now += TOKEN_FILE_MAX_AGE_MS;
  t.is(await auth(), 'Bearer first');
  now += 1;
  t.is(await auth(), 'Bearer second');
  unlinkSync(join(dir, 'token'));
  now += TOKEN_FILE_MAX_AGE_MS + 1;
  t.is(await auth(), 'Bearer second');
});

function makeTls(t: ExecutionContext): TestTls {
  const tls = makeTestTls();
  t.teardown(() => tls.cleanup());
  return tls;
}

interface Served {
  api: FakeKubeApi;
  tls: TestTls;
  dir: string;
  /** Writes the kubeconfig, checks that the agent's client and kubectl both list pods with it, returns the pod names. */
  listWith(cluster: Record<string, unknown>, user?: Record<string, unknown>): Promise<{ ours: string[]; kubectl: string[] | undefined }>;
}

/** The fake API server over HTTPS, requiring `token` unless a client certificate signed by the test CA comes with the request. */
async function served(t: ExecutionContext, opts: { token?: string } = {}): Promise<Served> {
  const tls = makeTls(t);
  const api = await new FakeKubeApi({ tls, clientCa: tls.ca, ...(opts.token ? { token: opts.token } : {}) }).start();
  t.teardown(() => api.stop());
  api.put('pods', { metadata: { name: 'web', namespace: 'app' }, spec: { nodeName: 'n0' }, status: { phase: 'Running', podIP: '10.1.0.1' } });
  const dir = mkdtempSync(join(tmpdir(), 'kube-kc-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const names = (list: Record<string, unknown>): string[] => (list.items as { metadata: { name: string } }[]).map((i) => i.metadata.name);
  let n = 0;
  const listWith: Served['listWith'] = async (cluster, user) => {
    const file = join(dir, `kubeconfig-${++n}`);
    writeFileSync(file, kubeconfig({ server: api.url, ...cluster }, user));
    const client = new KubeClient({ kubeconfig: file });
    t.teardown(() => client.close());
    const ours = names(await client.getJson('/api/v1/pods', {}));
    if (!KUBECTL) return { ours, kubectl: undefined };
    const out = await execa(KUBECTL, ['--kubeconfig', file, 'get', '--raw', '/api/v1/pods'], { timeout: 30_000, env: { HOME: dir }, reject: false });
    if (out.exitCode !== 0) throw new Error(`kubectl failed with the same kubeconfig: ${out.stderr}`);
    return { ours, kubectl: names(JSON.parse(out.stdout) as Record<string, unknown>) };
  };
  return { api, tls, dir, listWith };
}

/** kubectl must agree where installed (CI installs it); a machine without it checks only the agent's client. */
const agreed = (t: ExecutionContext, seen: { ours: string[]; kubectl: string[] | undefined }): void => {
  t.deepEqual(seen.ours, ['web']);
  if (seen.kubectl) t.deepEqual(seen.kubectl, ['web'], 'kubectl');
  else if (process.env.AMBIENT_REQUIRE_ROOT === '1') t.fail('kubectl not installed');
};

test('HTTPS: client certificate and key from files, CA file; the server sees the certificate (no token)', async (t) => {
  const { api, tls, listWith } = await served(t, { token: 'required' });
  const client = makeClientCert(tls, 'system:node:n0');
  agreed(t, await listWith({ 'certificate-authority': tls.caFile }, { 'client-certificate': client.certFile, 'client-key': client.keyFile }));
  t.true(api.requests.length >= 1 && api.requests.every((r) => r.clientCertCn === 'system:node:n0' && r.authorization === undefined));
});

test('HTTPS: inline CA, client certificate and key data', async (t) => {
  const { api, tls, listWith } = await served(t, { token: 'required' });
  const client = makeClientCert(tls, 'inline-user');
  agreed(t, await listWith({ 'certificate-authority-data': b64(tls.ca) }, { 'client-certificate-data': b64(client.cert), 'client-key-data': b64(client.key) }));
  t.true(api.requests.every((r) => r.clientCertCn === 'inline-user'));
});

test('HTTPS: a token file relative to the kubeconfig; user and password; the insecure flag; tls-server-name', async (t) => {
  const { api, tls, dir, listWith } = await served(t);
  writeFileSync(join(dir, 'tok'), 'file-token\n');
  agreed(t, await listWith({ 'certificate-authority': tls.caFile }, { tokenFile: 'tok' }));
  t.true(api.requests.every((r) => r.authorization === 'Bearer file-token'));
  api.requests.length = 0;
  agreed(t, await listWith({ 'insecure-skip-tls-verify': true }, { username: 'admin', password: 's3cret' }));
  t.true(api.requests.every((r) => r.authorization === `Basic ${b64('admin:s3cret')}`));
  // The server's certificate names 127.0.0.1 and localhost: a server name it has is accepted, another one is refused.
  agreed(t, await listWith({ 'certificate-authority': tls.caFile, 'tls-server-name': 'localhost' }, { token: 't' }));
  const file = join(dir, 'wrong-name');
  writeFileSync(file, kubeconfig({ server: api.url, 'certificate-authority': tls.caFile, 'tls-server-name': 'elsewhere.example' }, { token: 't' }));
  const wrong = new KubeClient({ kubeconfig: file });
  t.teardown(() => wrong.close());
  await t.throwsAsync(wrong.getJson('/api/v1/pods', {}), { instanceOf: KubeApiError, message: /reachable/ });
});

test('exec credential plugins fall back to client-node, as before', async (t) => {
  const { api, tls, dir, listWith } = await served(t, { token: 'exec-token' });
  const plugin = join(dir, 'credential-plugin');
  writeFileSync(plugin, `#!/bin/sh\necho '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"exec-token"}}'\n`);
  chmodSync(plugin, 0o755);
  const user = { exec: { apiVersion: 'client.authentication.k8s.io/v1', command: plugin, interactiveMode: 'Never' } };
  agreed(t, await listWith({ 'certificate-authority': tls.caFile }, user));
  t.true(api.requests.every((r) => r.authorization === 'Bearer exec-token'));
  const file = join(dir, 'exec');
  writeFileSync(file, kubeconfig({ server: api.url, 'certificate-authority': tls.caFile }, user));
  const access = await loadKubeAccess({ kubeconfig: file });
  t.teardown(() => access.close());
  t.is(access.via, 'client-node');
});

test('files a kubeconfig names that are missing or broken are KubeApiErrors naming the file and the field', async (t) => {
  const { tls, dir } = await served(t);
  const client = makeClientCert(tls, 'u');
  const other = makeClientCert(makeTls(t), 'v');
  const cases: [string, Record<string, unknown>, Record<string, unknown> | undefined, RegExp][] = [
    ['missing CA', { 'certificate-authority': join(dir, 'nope.crt') }, undefined, /cannot read .*nope\.crt \(clusters\["k"\]\.cluster\.certificate-authority\)/],
    ['CA not a certificate', { 'certificate-authority': join(dir, 'junk') }, undefined, /clusters\["k"\]\.cluster\.certificate-authority is not a PEM certificate/],
    ['missing token file', { 'certificate-authority': tls.caFile }, { tokenFile: 'absent' }, /cannot read .*absent \(users\["u"\]\.user\.tokenFile\)/],
    ['key of another certificate', { 'certificate-authority': tls.caFile }, { 'client-certificate': client.certFile, 'client-key': other.keyFile }, /client-certificate and .*client-key are not a matching PEM certificate and key/],
  ];
  writeFileSync(join(dir, 'junk'), '-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n');
  for (const [what, cluster, user, message] of cases) {
    const file = join(dir, `broken-${what.replaceAll(' ', '-')}`);
    writeFileSync(file, kubeconfig({ server: 'https://127.0.0.1:1', ...cluster }, user));
    const err = await t.throwsAsync(new KubeClient({ kubeconfig: file }).init(), { instanceOf: KubeApiError, message }, what);
    t.true(err?.message.startsWith(`kubeconfig ${file}:`), what);
  }
});
