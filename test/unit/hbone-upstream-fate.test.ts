// What the Node data path does with an inbound HBONE stream's upstream socket when the stream closes (issue 11):
// reset with any RST_STREAM code or when the peer never ended its side, kept when closed in order and fully written,
// held for the linger bound otherwise; and abortSocket, which must close the descriptor even after end().
import http2 from 'node:http2';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import test from 'ava';
import { readdirSync } from 'node:fs';
import { abortSocket, releaseUpstreamWithStream, upstreamFate } from '../../agent/src/hbone/server.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

test('a stream reset with any code takes its upstream with it, CANCEL included', (t) => {
  for (const code of [NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR]) {
    for (const ended of [true, false]) for (const done of [true, false]) t.is(upstreamFate(code, ended, done), 'reset');
  }
});

test('a stream torn down before the peer ended its side (its connection went away) takes its upstream with it', (t) => {
  t.is(upstreamFate(NGHTTP2_NO_ERROR, false, false), 'reset');
  t.is(upstreamFate(undefined, false, true), 'reset');
});

test('a stream closed in order keeps a finished upstream and lingers on one with bytes its app has not taken', (t) => {
  t.is(upstreamFate(NGHTTP2_NO_ERROR, true, true), 'keep');
  t.is(upstreamFate(NGHTTP2_NO_ERROR, true, false), 'linger');
  t.is(upstreamFate(undefined, true, false), 'linger');
});

test('an upstream whose app never reads is reset after the linger bound once its stream closed in order', async (t) => {
  // A real TCP pair on loopback whose server end never reads, so writes stay queued in the client socket.
  const held: net.Socket[] = [];
  const server = net.createServer((c) => {
    c.pause();
    held.push(c);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const upstream = net.connect({ port, host: '127.0.0.1' });
  await new Promise<void>((r) => upstream.once('connect', () => r()));
  upstream.on('error', () => undefined);
  while (upstream.write(Buffer.alloc(1 << 20))) await new Promise((r) => setImmediate(r));
  const stream = Object.assign(new PassThrough(), { rstCode: NGHTTP2_NO_ERROR });
  const ended = new Promise<void>((r) => stream.once('end', () => r()));
  let why = '';
  releaseUpstreamWithStream(stream, upstream, 100, (w) => (why = w));
  stream.end(); // the peer ended its side in order
  stream.resume();
  await ended;
  stream.destroy();
  await new Promise<void>((r) => upstream.once('close', () => r()));
  t.regex(why, /within 100 ms/);
  for (const c of held) c.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});

test('abortSocket closes the descriptor of a socket whose end() is still pending (resetAndDestroy leaks it: EINVAL)', async (t) => {
  const held: net.Socket[] = [];
  const server = net.createServer((c) => {
    c.pause();
    held.push(c);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  const fds = (): number => readdirSync('/proc/self/fd').length;
  const before = fds();
  for (let i = 0; i < 20; i++) {
    const s = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await new Promise<void>((r) => s.once('connect', () => r()));
    s.on('error', () => undefined);
    // Queued bytes the peer does not read keep the shutdown pending.
    while (s.write(Buffer.alloc(1 << 20))) await new Promise((r) => setImmediate(r));
    s.end();
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    abortSocket(s);
    await closed;
  }
  for (const c of held) c.destroy();
  await new Promise<void>((r) => server.close(() => r()));
  await new Promise((r) => setTimeout(r, 50));
  t.true(fds() <= before + 1, `descriptors ${before} -> ${fds()}`);
});
