// The native front of ambient-cni (cni/shim, built to dist/bin/ambient-cni): the fast path through the agent's
// /v1/cni/exec relays stdout, stderr and the exit code exactly; every failure of that path falls back to the Node plugin.
import test from 'ava';
import { execa } from 'execa';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { parseExecRequest } from '../../agent/src/server/event-server.js';
import { EventParseError } from '../../agent/src/protocol/cni-event.js';
import { CNI_SHIM } from '../testbed/repo.js';
import { netConf, podEnv, prevResultFor, startFakeAgent, tempDir } from './cni-helpers.js';

interface Seen {
  path: string;
  body: { env?: Record<string, string>; stdin?: string };
}

/** A raw agent double: answers /v1/cni/exec with `reply` (status + raw body), records what it was sent. */
async function execAgent(t: Parameters<typeof tempDir>[0], reply: { status: number; body: Buffer | string }): Promise<{ socket: string; seen: Seen[] }> {
  const socket = join(await tempDir(t), 'agent.sock');
  const seen: Seen[] = [];
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      seen.push({ path: req.url ?? '', body: JSON.parse(Buffer.concat(chunks).toString() || '{}') as Seen['body'] });
      // Content-Length framing, as the agent sends it (the shim does not read chunked replies: it falls back).
      res.writeHead(reply.status, { 'content-type': 'application/octet-stream', 'content-length': Buffer.byteLength(reply.body) });
      res.end(reply.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(socket, resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { socket, seen };
}

function shim(env: Record<string, string | undefined>, stdin: string | Buffer) {
  return execa(CNI_SHIM, [], { env: { PATH: process.env.PATH, ...env }, extendEnv: false, input: stdin, reject: false, stripFinalNewline: false });
}

test('fast path: the agent\'s framed reply is relayed byte for byte, with its exit code', async (t) => {
  const out = '{"cniVersion":"1.0.0","code":7,"msg":"x"}\n';
  const err = '{"level":50,"msg":"from the agent"}\n';
  const agent = await execAgent(t, { status: 200, body: `3\n${Buffer.byteLength(out)}\n${out}${err}` });
  const conf = JSON.stringify(netConf('1.0.0', agent.socket, { note: 'quote " back\\slash \t tab \u0001 ctl é' }));
  const r = await shim(podEnv('ADD'), conf);
  t.is(r.exitCode, 3);
  t.is(r.stdout, out);
  t.is(r.stderr, err);
  t.is(agent.seen[0]?.path, '/v1/cni/exec');
  t.is(agent.seen[0]?.body.stdin, conf, 'stdin arrives exactly, escapes and all');
  t.is(agent.seen[0]?.body.env?.CNI_COMMAND, 'ADD');
  t.is(agent.seen[0]?.body.env?.PATH, undefined, 'only CNI_* variables are forwarded');
});

const badReplies: [string, { status: number; body: string }][] = [
  ['a 404 (an older agent without the endpoint)', { status: 404, body: '{"code":4,"msg":"unknown endpoint"}' }],
  ['a 500', { status: 500, body: 'boom' }],
  ['a reply without framing', { status: 200, body: 'not framed' }],
  ['a stdout length longer than the body', { status: 200, body: '0\n999\n{}' }],
];
for (const [name, reply] of badReplies) {
  test(`falls back to the Node plugin on ${name}`, async (t) => {
    const agent = await execAgent(t, reply);
    // The Node plugin then talks to the same socket's event endpoints, which this double answers with the same junk:
    // ADD must end in a CNI error from the Node plugin, never in the shim printing the junk.
    const r = await shim(podEnv('ADD'), JSON.stringify(netConf('1.0.0', agent.socket, { prevResult: prevResultFor('1.0.0') })));
    t.is(r.exitCode, 1);
    const parsed = JSON.parse(r.stdout) as { code: number; msg: string };
    t.true(typeof parsed.code === 'number' && parsed.code > 0, r.stdout);
    t.true(agent.seen.some((s) => s.path === '/v1/cni/add'), 'the Node plugin made the ADD request itself');
  });
}

test('agent down: the Node fallback fails ADD closed (code 11) and lets DEL succeed', async (t) => {
  const socket = join(await tempDir(t), 'nobody.sock');
  const add = await shim(podEnv('ADD'), JSON.stringify(netConf('1.0.0', socket, { prevResult: prevResultFor('1.0.0') })));
  t.is(add.exitCode, 1);
  t.like(JSON.parse(add.stdout), { code: 11 });
  t.regex(add.stdout, /refusing to start pod .* outside the mesh/);
  const del = await shim(podEnv('DEL'), JSON.stringify(netConf('1.0.0', socket)));
  t.is(del.exitCode, 0);
  t.is(del.stdout, '');
});

test('fallback with a working agent: a Node plugin ADD succeeds against the regular endpoints', async (t) => {
  const agent = await startFakeAgent(t); // no /v1/cni/exec route: answers 404 there
  const prev = prevResultFor('1.0.0');
  const r = await shim(podEnv('ADD'), JSON.stringify(netConf('1.0.0', agent.socket, { prevResult: prev })));
  t.is(r.exitCode, 0, r.stderr);
  t.deepEqual(JSON.parse(r.stdout), prev);
});

test('VERSION without an agent answers like the Node plugin', async (t) => {
  const r = await shim({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}');
  t.is(r.exitCode, 0);
  t.deepEqual(JSON.parse(r.stdout), { cniVersion: '1.0.0', supportedVersions: ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'] });
});

test('oversized stdin goes to the Node plugin, which rejects it with code 6', async (t) => {
  const r = await shim(podEnv('ADD'), Buffer.alloc(2 * 1024 * 1024, 0x20));
  t.is(r.exitCode, 1);
  t.like(JSON.parse(r.stdout), { code: 6 });
});

test('parseExecRequest keeps only CNI_* variables and requires a string stdin', (t) => {
  t.deepEqual(parseExecRequest({ env: { CNI_COMMAND: 'ADD', LD_PRELOAD: '/x.so', CNI_ARGS: 'a=b' }, stdin: '{}' }), {
    env: { CNI_COMMAND: 'ADD', CNI_ARGS: 'a=b' },
    stdin: '{}',
  });
  t.throws(() => parseExecRequest({ env: {}, stdin: 3 }), { instanceOf: EventParseError });
  t.throws(() => parseExecRequest({ stdin: '' }), { instanceOf: EventParseError });
  t.throws(() => parseExecRequest([]), { instanceOf: EventParseError });
});
