// One settings source: the relay's settings come from settings.ts and tls.ts, field for field into the C struct
// (ahb.h), a bad value fails ahb_start naming it, and a setting changed in TypeScript is what the relay's SETTINGS frame
// carries (a Node HTTP/2 client over loopback reads it). Needs the built library (npm run build).
import test from 'ava';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import { join } from 'node:path';
import { type NativeEvent, loadNativeLib, parseEvent, toAhbSettings, MAX_EVENT_LINE } from '../../agent/src/hbone/native-lib.js';
import { LineSplitter } from '../../agent/src/protocol/line-splitter.js';
import { DEFAULT_KEEPALIVE, DEFAULT_SERVER_LIMITS, HTTP2_SETTINGS, relaySettings } from '../../agent/src/hbone/settings.js';
import { HBONE_ALPN, HBONE_CIPHERSUITES } from '../../agent/src/hbone/tls.js';
import { BuiltinCa } from '../../agent/src/identity/builtin-ca.js';
import { createCsr, generateP256 } from '../../agent/src/identity/x509-util.js';
import { takeFd } from '../../agent/src/platform/sockets.js';
import { REPO_ROOT } from '../testbed/repo.js';

const TD = 'cluster.local';

test('the relay\'s settings are settings.ts\'s and tls.ts\'s, and the limits in force', (t) => {
  const limits = { ...DEFAULT_SERVER_LIMITS, handshakeTimeoutMs: 1234, idleTimeoutMs: 0 };
  const s = relaySettings(limits);
  t.like(s, { ...HTTP2_SETTINGS, keepalive: DEFAULT_KEEPALIVE, handshakeTimeoutMs: 1234, idleTimeoutMs: 0, unreadLingerMs: limits.unreadLingerMs });
  t.is(s.ciphersuites, HBONE_CIPHERSUITES);
  t.is(s.alpn, HBONE_ALPN);
});

test('the binding fills every field of struct ahb_settings (ahb.h), and only those', (t) => {
  const header = readFileSync(join(REPO_ROOT, 'agent/native/hbone-relay/ahb.h'), 'utf8');
  const body = /struct ahb_settings \{([\s\S]*?)\n\};/.exec(header)?.[1] ?? '';
  const fields = [...body.matchAll(/^\s*(?:uint32_t|int32_t|const char \*)\s*(\w+);/gm)].map((m) => m[1]);
  t.true(fields.length > 10, 'ahb.h declares struct ahb_settings');
  t.deepEqual(Object.keys(toAhbSettings(relaySettings(DEFAULT_SERVER_LIMITS))), fields);
});

test.serial('a bad setting fails the start, naming it', (t) => {
  const lib = loadNativeLib();
  const good = relaySettings(DEFAULT_SERVER_LIMITS);
  t.is(lib.start({ ...good, maxFrameSize: 1000 }), -1);
  t.regex(lib.lastError(), /max_frame_size/);
  t.is(lib.start({ ...good, keepalive: { intervalMs: 0, timeoutMs: 20_000 } }), -1);
  t.regex(lib.lastError(), /keepalive_interval_ms/);
  t.is(lib.start({ ...good, ciphersuites: 'TLS_NO_SUCH_SUITE' }), -1);
  t.regex(lib.lastError(), /ciphersuites/);
  t.is(lib.start({ ...good, alpn: '' }), -1);
  t.regex(lib.lastError(), /alpn/);
});

test.serial('settings changed in TypeScript are what the relay\'s SETTINGS frame carries', async (t) => {
  const ca = await BuiltinCa.ephemeral({ trustDomain: TD });
  const leaf = async (name: string): Promise<{ chain: string; key: string }> => {
    const identity = `spiffe://${TD}/ns/test/sa/${name}`;
    const k = await generateP256();
    const signed = await ca.sign({ csrPem: await createCsr(identity, k.keys), identity, ttlSeconds: 600 });
    return { chain: signed.chainPem.join(''), key: k.keyPem };
  };
  const [server, client] = [await leaf('server'), await leaf('client')];
  const http2Settings = { ...HTTP2_SETTINGS, streamWindow: 1024 * 1024 + 7, maxFrameSize: 32_768, serverMaxConcurrentStreams: 7, serverMaxHeaderList: 20_000 };
  const lib = loadNativeLib();
  const fd = lib.start(relaySettings(DEFAULT_SERVER_LIMITS, http2Settings));
  t.true(fd >= 0, lib.lastError());
  const events = new net.Socket({ fd, readable: true, writable: true });
  const seen: NativeEvent[] = [];
  const split = new LineSplitter(MAX_EVENT_LINE);
  events.setEncoding('utf8');
  events.on('data', (d: string) => {
    for (const line of split.push(d)) {
      const e = parseEvent(line);
      if (e) seen.push(e);
    }
  });
  const ctx = lib.ctxNew(true, server.chain, server.key, ca.rootPem);
  t.true(ctx > 0, lib.lastError());
  const listener = net.createServer({ pauseOnConnect: true }, (sock) => {
    if (!lib.serverSession(ctx, takeFd(sock), TD)) t.fail(lib.lastError());
  });
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const { port } = listener.address() as net.AddressInfo;
  const session = http2.connect(`https://127.0.0.1:${port}`, {
    ca: ca.rootPem, cert: client.chain, key: client.key, minVersion: 'TLSv1.3', checkServerIdentity: () => undefined,
  });
  try {
    const remote = await new Promise<http2.Settings>((resolve, reject) => {
      session.once('remoteSettings', resolve);
      session.once('error', reject);
    });
    t.is(remote.initialWindowSize, http2Settings.streamWindow);
    t.is(remote.maxFrameSize, http2Settings.maxFrameSize);
    t.is(remote.maxConcurrentStreams, http2Settings.serverMaxConcurrentStreams);
    t.is(remote.maxHeaderListSize, http2Settings.serverMaxHeaderList);
    t.is(session.alpnProtocol, HBONE_ALPN);
  } finally {
    session.destroy();
    listener.close();
    lib.ctxFree(ctx);
    lib.stop();
    events.destroy();
  }
  t.false(seen.some((e) => e.ev === 'sessionClosed' && e.identityRefused), 'the client identity was accepted');
});
