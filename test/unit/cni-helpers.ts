// Test harness for ambient-cni: a fake agent (real HTTP server on a Unix socket in a temp dir) and an in-process
// invoker of run() that checks, on every call, that stdout carries nothing but one JSON document (or nothing).
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { EVENT_PATHS } from '../../agent/src/protocol/cni-event.js';
import { run } from '../../cni/src/main.js';

export interface RecordedRequest {
  method: string;
  path: string;
  body: unknown;
}

/** What the fake agent answers: a status and JSON body, or nothing at all (hang) to exercise the timeout. */
export type FakeReply = { status: number; body: unknown } | 'hang';

export interface FakeAgent {
  socket: string;
  requests: RecordedRequest[];
  /** Replaces the reply for one path (default replies: enrolled / removed / ok / ready). */
  reply(path: string, r: FakeReply): void;
}

const DEFAULT_REPLIES: Record<string, FakeReply> = {
  [EVENT_PATHS.add]: { status: 200, body: { result: 'enrolled' } },
  [EVENT_PATHS.del]: { status: 200, body: { result: 'removed' } },
  [EVENT_PATHS.check]: { status: 200, body: { result: 'ok' } },
  [EVENT_PATHS.gc]: { status: 200, body: { result: 'ok', removed: 2 } },
  [EVENT_PATHS.status]: { status: 200, body: { ready: true, node: 'node-1', backend: 'iptables', enrolled: 3 } },
};

/** A fresh folder under the system's temporary one (named `prefix`...), removed when the test ends. */
export async function tempDir(t: ExecutionContext, prefix = 'amb-cni-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** A request body as JSON, or the raw text when it is not JSON (a throw in the server's callback would be uncaught). */
function parseOrText(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export async function startFakeAgent(t: ExecutionContext): Promise<FakeAgent> {
  const dir = await tempDir(t);
  const socket = join(dir, 'cni.sock');
  const replies = new Map(Object.entries(DEFAULT_REPLIES));
  const requests: RecordedRequest[] = [];
  const hanging: ServerResponse[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const path = req.url ?? '';
      requests.push({ method: req.method ?? '', path, body: text === '' ? undefined : parseOrText(text) });
      const r = replies.get(path) ?? { status: 404, body: { code: 999, msg: `no route ${path}` } };
      if (r === 'hang') {
        hanging.push(res);
        return;
      }
      res.writeHead(r.status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(r.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const res of hanging) res.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { socket, requests, reply: (path, r) => replies.set(path, r) };
}

export interface Invocation {
  code: number;
  /** The parsed stdout document, or undefined when stdout was empty. */
  out: Record<string, unknown> | undefined;
  stdout: string;
  stderr: string;
  /** stderr parsed as pino JSON lines. */
  logs: Record<string, unknown>[];
}

/** Calls run() in-process with injected env/stdin; asserts stdout is empty or exactly one JSON document. */
export async function invoke(
  t: ExecutionContext,
  env: Record<string, string | undefined>,
  stdin: string | Buffer | object,
): Promise<Invocation> {
  const writes: string[] = [];
  let stderr = '';
  const input = typeof stdin === 'string' || Buffer.isBuffer(stdin) ? stdin : JSON.stringify(stdin);
  const code = await run({ env, stdin: input, stdout: (s) => writes.push(s), stderr: (s) => (stderr += s) });
  const stdout = writes.join('');
  t.true(writes.length <= 1, `stdout written ${writes.length} times: ${stdout}`);
  let out: Record<string, unknown> | undefined;
  if (stdout !== '') {
    t.true(stdout.endsWith('}\n'), `stdout is not one JSON object: ${stdout}`);
    out = JSON.parse(stdout) as Record<string, unknown>;
  }
  const logs = stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { code, out, stdout, stderr, logs };
}

/** Asserts a CNI error result: exit code 1, the given code, and (optionally) a message pattern. */
export function assertCniError(t: ExecutionContext, r: Invocation, code: number, msg?: RegExp): void {
  t.is(r.code, 1, `expected failure, got stdout ${r.stdout}`);
  t.is(r.out?.code, code, `expected code ${code}: ${r.stdout}`);
  t.is(typeof r.out?.msg, 'string');
  if (msg) t.regex(String(r.out?.msg), msg);
}

export const SUPPORTED = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] as const;
/** Every released spec version, including those this plugin refuses. */
export const SPEC_VERSIONS = ['0.1.0', '0.2.0', ...SUPPORTED] as const;

export const POD = { name: 'web-0', namespace: 'demo', uid: '5f1c-uid', containerId: 'c0ffee01' };
export const POD_ARGS = `IgnoreUnknown=1;K8S_POD_NAMESPACE=${POD.namespace};K8S_POD_NAME=${POD.name};K8S_POD_INFRA_CONTAINER_ID=${POD.containerId};K8S_POD_UID=${POD.uid}`;

/** The environment a runtime passes for a pod attachment. */
export function podEnv(command: string, over: Record<string, string | undefined> = {}): Record<string, string | undefined> {
  return {
    CNI_COMMAND: command,
    CNI_CONTAINERID: POD.containerId,
    CNI_NETNS: '/var/run/netns/cni-1234',
    CNI_IFNAME: 'eth0',
    CNI_PATH: '/opt/cni/bin',
    CNI_ARGS: POD_ARGS,
    ...over,
  };
}

/** A plugin configuration as libcni derives it from a conflist, with our keys. */
export function netConf(version: string, socket: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { cniVersion: version, name: 'k8s-pod-network', type: 'ambient-cni', agent_socket: socket, ...extra };
}

/** A realistic prevResult (bridge + host-local) in the shape of the given version. */
export function prevResultFor(version: string): Record<string, unknown> {
  const v0 = version.startsWith('0.');
  return {
    cniVersion: version,
    interfaces: [
      { name: 'cni0', mac: '0a:58:0a:f4:01:01' },
      { name: 'veth1a2b3c', mac: '2e:9f:11:22:33:44' },
      { name: 'eth0', mac: '0a:58:0a:f4:01:05', sandbox: '/var/run/netns/cni-1234' },
    ],
    ips: [
      { ...(v0 ? { version: '4' } : {}), address: '10.244.1.5/24', gateway: '10.244.1.1', interface: 2 },
      { ...(v0 ? { version: '6' } : {}), address: 'fd00:10:244:1::5/64', gateway: 'fd00:10:244:1::1', interface: 2 },
    ],
    routes: [{ dst: '0.0.0.0/0' }, { dst: '::/0' }],
    dns: { nameservers: ['10.96.0.10'], search: ['demo.svc.cluster.local'] },
  };
}
