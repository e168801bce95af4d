// The successor's take-over request (handover/session.ts requestTakeOver): the wait for the upgrade answer and the wait
// for `released` are bounded separately, so a predecessor that answers at once and then spends longer than the answer
// bound freezing and sending its listeners is still taken over, and one that never releases is given up on.
import { rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import { HANDOVER_PROTOCOL, TakeOverError, encodeHandoverMessage } from '../../agent/src/handover/protocol.js';
import { requestTakeOver } from '../../agent/src/handover/session.js';

let sockets = 0;

/** A predecessor on a unix socket that upgrades at once and sends `released` after `releaseAfterMs` (never when undefined). */
async function predecessor(t: ExecutionContext, releaseAfterMs: number | undefined): Promise<string> {
  const path = join(tmpdir(), `handover-request-${process.pid}-${++sockets}.sock`);
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  const upgraded = new Set<Duplex>();
  server.on('upgrade', (_req, socket) => {
    upgraded.add(socket);
    socket.on('error', () => undefined);
    socket.write(`HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: ${HANDOVER_PROTOCOL}\r\n\r\n`);
    if (releaseAfterMs !== undefined) setTimeout(() => socket.write(encodeHandoverMessage({ type: 'released' })), releaseAfterMs);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, resolve);
  });
  t.teardown(async () => {
    for (const s of upgraded) s.destroy(); // upgraded sockets are no longer the server's to close
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(path, { force: true });
  });
  return path;
}

test('a predecessor that answers at once and releases after longer than the answer bound is taken over', async (t) => {
  const path = await predecessor(t, 400);
  const { channel, released } = await requestTakeOver(path, { answerMs: 100, releasedMs: 5000 });
  t.is(released.type, 'released');
  channel.close();
});

test('a predecessor that answers but never releases is given up on after releasedMs, naming the wait', async (t) => {
  const path = await predecessor(t, undefined);
  const err = await t.throwsAsync(requestTakeOver(path, { answerMs: 100, releasedMs: 300 }), { instanceOf: TakeOverError });
  t.regex(err?.message ?? '', /did not start: .*sent nothing for 300 ms/);
});
