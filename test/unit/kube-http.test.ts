// The Kubernetes client's own HTTP (agent/src/workload/kube/client.ts, http-transport.ts; lines split by protocol/line-splitter.ts): watch lines
// and their bound, abort and early exit closing the socket, timeouts, gzip, keep-alive, and that undici is not loaded.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { stringify } from 'yaml';
import { DEFAULT_KUBE_CLIENT_BOUNDS, KubeApiError, KubeClient, MAX_BODY_BYTES_LIMIT, type KubeClientBounds } from '../../agent/src/workload/kube/client.js';
import { constants } from 'node:buffer';
import { LineSplitter } from '../../agent/src/protocol/line-splitter.js';
import { pollUntil } from '../fixtures/fake-kube-api.js';

test('watch lines: a character split between chunks, CRLF trimmed; stop mode ends at the bound with the lines before it', (t) => {
  const lines = new LineSplitter(64, undefined, 'stop');
  const decoder = new TextDecoder();
  const bytes = Buffer.from('{"a":1}\n{"b":"é"}\r\n{"c"');
  const split = bytes.indexOf(Buffer.from('é')) + 1; // inside the two bytes of é
  const push = (b: Uint8Array): string[] => lines.push(decoder.decode(b, { stream: true }));
  t.deepEqual(push(bytes.subarray(0, 3)), []);
  t.deepEqual(push(bytes.subarray(3, split)), ['{"a":1}']);
  t.deepEqual(push(bytes.subarray(split)), ['{"b":"é"}\r']);
  t.deepEqual(push(Buffer.from(':3}\n\n')), ['{"c":3}']);
  t.is(lines.buffered, 0);

  const short = new LineSplitter(4, undefined, 'stop');
  t.deepEqual(short.push('abcd\n'), ['abcd']);
  t.deepEqual(short.push('ok\nabcde\nlater\n'), ['ok'], 'the lines before the over-long one, none after');
  t.true(short.stopped);
  t.deepEqual(short.push('more\n'), [], 'nothing once stopped');
  const pieces = new LineSplitter(4, undefined, 'stop');
  t.deepEqual(pieces.push('ab'), []);
  t.deepEqual(pieces.push('cde'), []);
  t.true(pieces.stopped, 'stopped as the bound is passed, before any newline');
});

type Handler = (req: IncomingMessage, res: ServerResponse) => void;

interface Served {
  client: KubeClient;
  /** Sockets the server has open now. */
  open: Set<Socket>;
  /** Connections accepted so far. */
  accepted: () => number;
  requests: IncomingMessage[];
}

/** A plain-HTTP server on loopback (the kubeconfig's insecure flag allows http://) answering with `handler`. */
async function served(t: ExecutionContext, handler: Handler, bounds: Partial<KubeClientBounds> = {}): Promise<Served> {
  const open = new Set<Socket>();
  const requests: IncomingMessage[] = [];
  let accepted = 0;
  const server = createServer((req, res) => {
    requests.push(req);
    handler(req, res);
  });
  server.on('connection', (socket: Socket) => {
    accepted++;
    open.add(socket);
    socket.on('close', () => open.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const dir = mkdtempSync(join(tmpdir(), 'kube-http-'));
  const kubeconfig = join(dir, 'kubeconfig');
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  writeFileSync(kubeconfig, stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
    clusters: [{ name: 'k', cluster: { server: url, 'insecure-skip-tls-verify': true } }],
    contexts: [{ name: 'c', context: { cluster: 'k', user: 'u' } }],
    users: [{ name: 'u', user: { token: 'tok' } }],
  }));
  const client = new KubeClient({ kubeconfig }, bounds);
  t.teardown(async () => {
    await client.close();
    for (const socket of open) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });
  return { client, open, accepted: () => accepted, requests };
}

const pod = (name: string): string => JSON.stringify({ type: 'ADDED', object: { metadata: { name } } }) + '\n';

/** A watch that sends `first` and then holds the stream open. */
const holdingWatch = (first: string): Handler => (_req, res) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.write(first);
};

test('a watch aborted mid-stream closes its connection', async (t) => {
  const { client, open } = await served(t, holdingWatch(pod('a')));
  const ctl = new AbortController();
  const events = client.watch('/api/v1/pods', {}, ctl.signal);
  const first = await events.next();
  t.like(first.value, { type: 'ADDED', object: { metadata: { name: 'a' } } });
  t.is(open.size, 1);
  ctl.abort();
  await pollUntil(() => open.size, (n) => n === 0, 'the aborted watch socket to close');
  await t.throwsAsync(events.next(), { any: true, name: 'AbortError' });
});

test('leaving a watch loop early closes its connection; the next request opens a fresh one', async (t) => {
  const { client, open, accepted } = await served(t, (req, res) => {
    if (req.url?.includes('watch=true')) return holdingWatch(pod('a') + pod('b'))(req, res);
    res.end('{"kind":"PodList","items":[]}');
  });
  for await (const ev of client.watch('/api/v1/pods', {}, new AbortController().signal)) {
    t.is(ev.type, 'ADDED');
    break;
  }
  await pollUntil(() => open.size, (n) => n === 0, 'the abandoned watch socket to close');
  t.like(await client.getJson('/api/v1/pods', {}), { kind: 'PodList' });
  t.is(accepted(), 2);
});

test('a watch event line over the bound fails the watch with a KubeApiError and closes the connection', async (t) => {
  const { client, open } = await served(t, holdingWatch(pod('ok') + JSON.stringify({ type: 'ADDED', object: { pad: 'x'.repeat(2000) } }) + '\n'), { maxWatchLineChars: 1024 });
  const events = client.watch('/api/v1/pods', {}, new AbortController().signal);
  t.like((await events.next()).value, { object: { metadata: { name: 'ok' } } });
  await t.throwsAsync(events.next(), { instanceOf: KubeApiError, message: 'watch /api/v1/pods: an event is over 1024 characters' });
  await pollUntil(() => open.size, (n) => n === 0, 'the refused watch socket to close');
});

test('no response in time, or a body that stalls, is a KubeApiError; both connections are closed', async (t) => {
  const { client, open } = await served(t, (req, res) => {
    if (req.url?.startsWith('/stall')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.write('{"items":');
    }
    // /silent: never answers
  // The response bound is long enough for the stalling server's headers to arrive on a loaded machine.
  }, { responseTimeoutMs: 2000, bodyIdleTimeoutMs: 200 });
  await t.throwsAsync(client.getJson('/silent', {}), { instanceOf: KubeApiError, message: /^GET http:\/\/127\.0\.0\.1:\d+\/silent: no response in 2 s$/ });
  await t.throwsAsync(client.getJson('/stall', {}), { instanceOf: KubeApiError, message: /^GET http:\/\/127\.0\.0\.1:\d+\/stall: no data in 0\.2 s$/ });
  await t.throwsAsync(client.mergePatch('/silent', { a: 1 }), { instanceOf: KubeApiError, message: /PATCH .*\/silent: no response/ });
  await pollUntil(() => open.size, (n) => n === 0, 'the timed-out sockets to close');
});

test('a gzip-compressed list is decoded; a watch does not ask for compression; one kept-alive connection serves both lists', async (t) => {
  const list = JSON.stringify({ kind: 'PodList', items: [{ metadata: { name: 'p'.repeat(100) } }] });
  const { client, requests, accepted } = await served(t, (req, res) => {
    if (req.url?.includes('watch=true')) {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end(pod('w'));
    }
    const gzip = String(req.headers['accept-encoding']).includes('gzip');
    res.writeHead(200, { 'content-type': 'application/json', ...(gzip ? { 'content-encoding': 'gzip' } : {}) });
    res.end(gzip ? gzipSync(list) : list);
  });
  t.deepEqual(await client.getJson('/api/v1/pods', { limit: '5' }), JSON.parse(list));
  t.deepEqual(await client.getJson('/api/v1/pods', {}), JSON.parse(list));
  t.is(accepted(), 1);
  const events = [];
  for await (const ev of client.watch('/api/v1/pods', {}, new AbortController().signal)) events.push(ev.object);
  t.deepEqual(events, [{ metadata: { name: 'w' } }]);
  t.is(requests[0]?.headers['accept-encoding'], 'gzip');
  t.is(requests[0]?.headers.authorization, 'Bearer tok');
  t.is(requests[2]?.headers['accept-encoding'], undefined);
});

test('an error status is a KubeApiError carrying it and the Status message; an unreachable server says so', async (t) => {
  const { client } = await served(t, (_req, res) => {
    res.writeHead(410, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'Status', code: 410, message: 'too old resource version' }));
  });
  const list = await t.throwsAsync(client.getJson('/api/v1/pods', {}), { instanceOf: KubeApiError, message: 'GET /api/v1/pods: HTTP 410: too old resource version' });
  t.is(list?.status, 410);
  const watch = await t.throwsAsync(client.watch('/api/v1/pods', {}, new AbortController().signal).next(), { instanceOf: KubeApiError });
  t.is(watch?.status, 410);

  const dir = mkdtempSync(join(tmpdir(), 'kube-http-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'kubeconfig'), stringify({
    apiVersion: 'v1', kind: 'Config', 'current-context': 'c',
    clusters: [{ name: 'k', cluster: { server: 'http://127.0.0.1:1', 'insecure-skip-tls-verify': true } }],
    contexts: [{ name: 'c', context: { cluster: 'k' } }],
  }));
  const unreachable = new KubeClient({ kubeconfig: join(dir, 'kubeconfig') });
  t.teardown(() => unreachable.close());
  await t.throwsAsync(unreachable.getJson('/api', {}), { instanceOf: KubeApiError, message: 'GET http://127.0.0.1:1/api failed (is the API server reachable?)' });
});

test('loading the kubernetes source does not load undici', async (t) => {
  const script = [
    "await import('./agent/src/workload/kube/client.js');",
    "await import('./agent/src/workload/kube-source.js');",
    "await import('./agent/src/workload/kube/credentials.js');",
    "const { createRequire } = await import('node:module');",
    "const loaded = Object.keys(createRequire(import.meta.url).cache).filter((f) => f.includes('/undici/'));",
    'console.log(JSON.stringify(loaded));',
  ].join('\n');
  const { stdout } = await execa('node', ['--import=tsx', '--input-type=module', '-e', script], { cwd: join(import.meta.dirname, '../..'), timeout: 60_000 });
  t.deepEqual(JSON.parse(stdout), []);
});

test('a list whose decompressed body passes the bound (a gzip bomb) fails with a KubeApiError and closes its socket', async (t) => {
  const bomb = gzipSync(Buffer.alloc(4 * 1024 * 1024, 0x20)); // 4 MiB of spaces in about 4 KiB
  const { client, open } = await served(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' });
    res.end(bomb);
  }, { maxBodyBytes: 1024 * 1024 });
  t.true(bomb.length < 64 * 1024);
  await t.throwsAsync(client.getJson('/api/v1/pods', {}), { instanceOf: KubeApiError, message: /\/api\/v1\/pods: the response is over 1048576 bytes \(the client's maxBodyBytes bound\)/ });
  await pollUntil(() => open.size, (n) => n === 0, 'the refused list\'s socket to close');
});

test('maxBodyBytes: the default is 256 MiB, below V8\'s longest string; a bound past it is refused; a streamed list past the bound fails naming it', async (t) => {
  t.is(DEFAULT_KUBE_CLIENT_BOUNDS.maxBodyBytes, 256 * 1024 * 1024);
  t.true(DEFAULT_KUBE_CLIENT_BOUNDS.maxBodyBytes <= constants.MAX_STRING_LENGTH);
  t.is(MAX_BODY_BYTES_LIMIT, constants.MAX_STRING_LENGTH);
  const creds = { kubeconfig: '/nonexistent' };
  t.throws(() => new KubeClient(creds, { maxBodyBytes: 512 * 1024 * 1024 }), { instanceOf: RangeError, message: /maxBodyBytes must be an integer from 1 to \d+/ });
  t.throws(() => new KubeClient(creds, { maxBodyBytes: 0 }), { instanceOf: RangeError });
  t.notThrows(() => new KubeClient(creds, { maxBodyBytes: MAX_BODY_BYTES_LIMIT }));
  const item = JSON.stringify({ metadata: { name: 'p'.repeat(1000) } });
  const body = `{"kind":"PodList","metadata":{"resourceVersion":"1"},"items":[${Array.from({ length: 200 }, () => item).join(',')}]}`;
  const { client, open } = await served(t, (_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(body);
  }, { maxBodyBytes: 64 * 1024 });
  t.true(body.length > 128 * 1024);
  let items = 0;
  await t.throwsAsync(client.getList('/api/v1/pods', {}, undefined, () => items++), { instanceOf: KubeApiError, message: /\/api\/v1\/pods: the response is over 65536 bytes \(the client's maxBodyBytes bound\)/ });
  t.true(items < 200, 'refused before the whole list was read');
  await pollUntil(() => open.size, (n) => n === 0, 'the refused list\'s socket to close');
});
