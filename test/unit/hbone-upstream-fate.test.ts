// What the Node data path does with an inbound HBONE stream's upstream socket when the stream closes (issue 11):
// reset with any RST_STREAM code, kept when closed in order and fully written, held for the linger bound otherwise.
import http2 from 'node:http2';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import test from 'ava';
import { releaseUpstreamWithStream, upstreamFate } from '../../agent/src/hbone/server.js';

const { NGHTTP2_NO_ERROR, NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR } = http2.constants;

test('a stream reset with any code takes its upstream with it, CANCEL included', (t) => {
  for (const code of [NGHTTP2_CANCEL, NGHTTP2_INTERNAL_ERROR]) {
    t.is(upstreamFate(code, true), 'reset');
    t.is(upstreamFate(code, false), 'reset');
  }
});

test('a stream closed in order keeps a finished upstream and lingers on one with bytes its app has not taken', (t) => {
  t.is(upstreamFate(NGHTTP2_NO_ERROR, true), 'keep');
  t.is(upstreamFate(NGHTTP2_NO_ERROR, false), 'linger');
  t.is(upstreamFate(undefined, false), 'linger');
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
  let why = '';
  releaseUpstreamWithStream(stream, upstream, 100, (w) => (why = w));
  stream.destroy();
  await new Promise<void>((r) => upstream.once('close', () => r()));
  t.regex(why, /within 100 ms/);
  for (const c of held) c.destroy();
  await new Promise<void>((r) => server.close(() => r()));
});
