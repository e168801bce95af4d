// The event socket's staging path during a take-over: two agents in one PID (as two agents in pods, each PID 1 in its
// own PID namespace) get their own staging sockets, so the old one's stop never removes the new one's; stale ones go.
import test from 'ava';
import http from 'node:http';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventServer, isStagingName, type EventServerDeps } from '../../agent/src/server/event-server.js';
import type { Enroller } from '../../agent/src/reconcile/enroller.js';
import { createRootLogger } from '../../agent/src/log.js';

/** What the server needs to start, stop and answer /v1/status (no plugin event reaches it here). */
function deps(node: string): EventServerDeps {
  return {
    enroller: {} as Enroller,
    status: () => ({ ready: true, node, backend: 'iptables', enrolled: 0, malformedPolicies: 0, malformed: [] }),
    certs: () => ({}),
    ready: Promise.resolve(),
    log: createRootLogger('silent'),
  };
}

function status(socketPath: string): Promise<{ node?: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ socketPath, path: '/v1/status', timeout: 5000, agent: false }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += String(d)));
      res.on('end', () => {
        // Parsed here, inside an event callback: a throw would be an uncaught exception, so it rejects instead.
        try {
          resolve(JSON.parse(body) as { node?: string });
        } catch (err) {
          reject(err);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('no answer')));
    req.on('error', reject);
  });
}

test('staging names: a token or an older agent\'s pid between the socket name and .new', (t) => {
  t.true(isStagingName('cni.sock', 'cni.sock.0123456789abcdef.new'));
  t.true(isStagingName('cni.sock', 'cni.sock.1.new'));
  t.false(isStagingName('cni.sock', 'cni.sock'));
  t.false(isStagingName('cni.sock', 'cni.sock.new'));
  t.false(isStagingName('cni.sock', 'other.sock.1.new'));
  t.false(isStagingName('cni.sock', 'cni.sock.x/y.new'));
});

test('two agents with the same pid: the predecessor\'s stop leaves the successor\'s staging socket, which then publishes', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-staging-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'cni.sock');
  writeFileSync(join(dir, 'cni.sock.4242.new'), ''); // left by an agent killed before it published
  const old = new EventServer(socketPath, deps('old'));
  await old.start();
  t.false(existsSync(join(dir, 'cni.sock.4242.new')), 'a stale staging socket is removed');
  const next = new EventServer(socketPath, deps('new'));
  t.teardown(() => next.stop());
  await next.start({ publish: false });
  t.is((await status(socketPath)).node, 'old', 'the running agent answers until the successor publishes');
  await old.stop(); // e.g. its onFatal in the middle of the take-over
  t.is(readdirSync(dir).filter((n) => isStagingName('cni.sock', n)).length, 1, 'the successor\'s staging socket is still there');
  t.notThrows(() => next.publish());
  t.is((await status(socketPath)).node, 'new');
  await next.stop();
  t.deepEqual(readdirSync(dir), [], 'nothing left behind');
});

test('a successor that published and died: the running agent takes the socket path back, and answers there', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-staging-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'cni.sock');
  const old = new EventServer(socketPath, deps('old'));
  t.teardown(() => old.stop());
  await old.start();
  t.false(await old.reclaimPath(), 'nothing to take back while the path is its own');
  const next = new EventServer(socketPath, deps('new'));
  await next.start({ publish: false });
  next.publish();
  t.is((await status(socketPath)).node, 'new');
  // The successor dies without removing its socket file (kill -9): the path names a socket no one listens on.
  const dead = new EventServer(socketPath, deps('dead'));
  await dead.start(); // publishes over the path, then is closed without its stop() tidying up
  t.teardown(() => dead.stop());
  await next.stop();
  await new Promise<void>((resolve) => (dead as unknown as { server: http.Server }).server.close(() => resolve()));
  await t.throwsAsync(status(socketPath), undefined, 'nobody answers on the path');
  t.true(await old.reclaimPath(), 'the running agent publishes its socket again');
  t.is((await status(socketPath)).node, 'old');
  t.is(readdirSync(dir).filter((n) => isStagingName('cni.sock', n)).length, 0, 'no staging socket left behind');
});
