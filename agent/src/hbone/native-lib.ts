// koffi binding to the native HBONE data plane (agent/native/hbone-relay/ -> dist/native/libambient-hbone.so) and the
// parsing of its event stream. The library owns TLS, HTTP/2 and byte pumping; this file only moves settings, ids, fds and strings.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import koffi from 'koffi';
import { AmbientError } from '../errors.js';
import type { RelaySettings } from './settings.js';

/** What the loop thread reports, one JSON object per line. */
export type NativeEvent =
  | { ev: 'up'; session: number; peer: string; peerNotAfter: number; peerSerial: string }
  | { ev: 'settings'; session: number; maxStreams: number }
  | { ev: 'goaway'; session: number; code: number }
  | { ev: 'sessionClosed'; session: number; wasUp: number; error: string; identityRefused?: number; timedOut?: number; goawayCode?: number }
  | { ev: 'status'; stream: number; status: number; error?: string; retryFd?: number }
  | { ev: 'request'; session: number; stream: number; method: string; authority: string; peer: string }
  | { ev: 'closed'; stream: number; bytesIn: number; bytesOut: number; h2Error: number; errored: number; connectFailed?: number; error?: string }
  /** A connection an outbound listener accepted: `fd` is the agent's; `dst` its original destination. */
  | { ev: 'accepted'; listener: number; fd: number; src: string; srcPort: number; dst: string; dstPort: number }
  /** `gone`: the listener could not be made (there is none); else it rests a second after accept() failed. */
  | { ev: 'listenerError'; listener: number; error: string; gone?: number };

const EVENTS = new Set(['up', 'settings', 'goaway', 'sessionClosed', 'status', 'request', 'closed', 'accepted', 'listenerError']);

/** One event line, or undefined for a line that is not one (never expected; logged by the caller). Pure. */
export function parseEvent(line: string): NativeEvent | undefined {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null) return undefined;
  const ev = (v as { ev?: unknown }).ev;
  return typeof ev === 'string' && EVENTS.has(ev) ? (v as NativeEvent) : undefined;
}

/**
 * Longest event line accepted from the library. Its events are small (the largest, `request`, carries a :method of at
 * most 64 bytes, an :authority of at most 2 KiB, the relay's bounds of maxMethod and maxAuthority, and a SPIFFE ID of at
 * most 2 KiB, escaped; the relay writes at most 32 KiB a line): a longer line is a bug, dropped and reported rather than
 * buffered without end.
 */
export const MAX_EVENT_LINE = 256 * 1024;

/** Extra CONNECT headers in the library's "name\nvalue\n" form. Names are lower-cased (HTTP/2). Pure. */
export function encodeHeaders(headers: Readonly<Record<string, string>>): string {
  let out = '';
  for (const [k, v] of Object.entries(headers)) {
    if (/[\n\0]/.test(k) || /[\n\0]/.test(v)) throw new Error(`header ${JSON.stringify(k)} contains a newline or NUL`);
    out += `${k.toLowerCase()}\n${v}\n`;
  }
  return out;
}

export interface NativeLib {
  /** Starts the loop thread with `settings`; the agent's end of the event socket, or -1 (lastError names a bad setting). */
  start(settings: RelaySettings): number;
  stop(): void;
  lastError(): string;
  ctxNew(server: boolean, chainPem: string, keyPem: string, rootsPem: string): number;
  ctxFree(id: number): void;
  clientSession(ctx: number, fd: number, expectedId: string): number;
  serverSession(ctx: number, fd: number, trustDomain: string): number;
  clientStream(session: number, fd: number, authority: string, headers: string): number;
  answer(stream: number, status: number, fd: number): void;
  /** 200 once `fd` (a non-blocking socket, its connect in flight; owned from the call on) connects, 503 if it fails or times out. */
  answerConnect(stream: number, fd: number, timeoutMs: number): void;
  closeStream(stream: number): void;
  closeSession(session: number, graceful: boolean): void;
  /** A server session's shutdown notice (GOAWAY with the highest stream id): no new streams; closeSession follows. */
  closeSessionNotice(session: number): void;
  /** [read from the app socket, written to it], or undefined once the stream is gone. */
  streamBytes(stream: number): [number, number] | undefined;
  /**
   * An outbound listener over listening socket `fd` (owned from the call on; `ipv6`: its family): its connections come as
   * "accepted" events, at most `credits` before listenCredit grants more. The listener id, or 0 (fd closed; lastError).
   */
  listen(fd: number, ipv6: boolean, credits: number): number;
  /** Grants a listener `n` more "accepted" events (as many as the agent has taken); false if nothing was granted (out of memory). */
  listenCredit(listener: number, n: number): boolean;
  /** Stops a listener and closes its fd. */
  unlisten(listener: number): void;
  /** The server side's SPIFFE rule: undefined when `uri` is a valid ID in `trustDomain` ('' = any), else the rule broken. */
  spiffeCheck(uri: string, trustDomain: string): string | undefined;
}

/** Where the built library lives: dist/native beside dist/agent, or AMBIENT_NATIVE_LIB. */
export function nativeLibPath(): string {
  const env = process.env.AMBIENT_NATIVE_LIB;
  if (env) return env;
  // This file is dist/agent/src/hbone/native-lib.js when built, agent/src/hbone/native-lib.ts under tsx.
  const here = dirname(fileURLToPath(import.meta.url));
  for (const up of ['../../..', '../../../dist']) {
    const p = join(here, up, 'native/libambient-hbone.so');
    if (existsSync(p)) return p;
  }
  return join(here, '../../../native/libambient-hbone.so');
}

let loaded: NativeLib | undefined;

/** struct ahb_settings of agent/native/hbone-relay/ahb.h, field for field (the relay checks each value's range). */
interface AhbSettings {
  stream_window: number;
  connection_window: number;
  max_frame_size: number;
  server_max_header_list: number;
  client_max_header_list: number;
  server_max_streams: number;
  peer_max_streams_before_settings: number;
  max_method: number;
  max_authority: number;
  keepalive_interval_ms: number;
  keepalive_timeout_ms: number;
  handshake_timeout_ms: number;
  idle_timeout_ms: number;
  unread_linger_ms: number;
  ciphersuites: string;
  alpn: string;
}

/** The C struct's fields from the agent's settings. Pure. */
export function toAhbSettings(s: RelaySettings): AhbSettings {
  return {
    stream_window: s.streamWindow,
    connection_window: s.connectionWindow,
    max_frame_size: s.maxFrameSize,
    server_max_header_list: s.serverMaxHeaderList,
    client_max_header_list: s.clientMaxHeaderList,
    server_max_streams: s.serverMaxConcurrentStreams,
    peer_max_streams_before_settings: s.peerMaxConcurrentStreamsBeforeSettings,
    max_method: s.maxMethod,
    max_authority: s.maxAuthority,
    keepalive_interval_ms: s.keepalive.intervalMs,
    keepalive_timeout_ms: s.keepalive.timeoutMs,
    handshake_timeout_ms: s.handshakeTimeoutMs,
    idle_timeout_ms: s.idleTimeoutMs,
    unread_linger_ms: s.unreadLingerMs,
    ciphersuites: s.ciphersuites,
    alpn: s.alpn,
  };
}

/** Loads the library once (throws with the path when it is missing: run scripts/build.sh). */
export function loadNativeLib(path = nativeLibPath()): NativeLib {
  if (loaded) return loaded;
  if (!existsSync(path)) throw new AmbientError('AMB_ERR_NATIVE_LIB', `native HBONE library ${path} not found (scripts/build.sh builds it)`);
  const lib = koffi.load(path);
  koffi.struct('ahb_settings', {
    stream_window: 'uint32_t',
    connection_window: 'uint32_t',
    max_frame_size: 'uint32_t',
    server_max_header_list: 'uint32_t',
    client_max_header_list: 'uint32_t',
    server_max_streams: 'uint32_t',
    peer_max_streams_before_settings: 'uint32_t',
    max_method: 'uint32_t',
    max_authority: 'uint32_t',
    keepalive_interval_ms: 'int32_t',
    keepalive_timeout_ms: 'int32_t',
    handshake_timeout_ms: 'int32_t',
    idle_timeout_ms: 'int32_t',
    unread_linger_ms: 'int32_t',
    ciphersuites: 'const char *',
    alpn: 'const char *',
  });
  const f = {
    start: lib.func('int ahb_start(const ahb_settings *settings)'),
    stop: lib.func('void ahb_stop(void)'),
    lastError: lib.func('const char *ahb_last_error(void)'),
    ctxNew: lib.func('uint64_t ahb_ctx_new(int server, const char *chain, const char *key, const char *roots)'),
    ctxFree: lib.func('void ahb_ctx_free(uint64_t id)'),
    clientSession: lib.func('uint64_t ahb_client_session(uint64_t ctx, int fd, const char *expected)'),
    serverSession: lib.func('uint64_t ahb_server_session(uint64_t ctx, int fd, const char *td)'),
    clientStream: lib.func('uint64_t ahb_client_stream(uint64_t session, int fd, const char *authority, const char *headers)'),
    answer: lib.func('void ahb_answer(uint64_t stream, int status, int fd)'),
    answerConnect: lib.func('void ahb_answer_connect(uint64_t stream, int fd, int timeout_ms)'),
    closeStream: lib.func('void ahb_close_stream(uint64_t stream)'),
    closeSession: lib.func('void ahb_close_session(uint64_t session, int graceful)'),
    streamBytes: lib.func('int ahb_stream_bytes(uint64_t stream, _Out_ uint64_t *out)'),
    spiffeCheck: lib.func('const char *ahb_spiffe_check(const char *uri, const char *td)'),
    listen: lib.func('uint64_t ahb_listen(int fd, int ipv6, int credits)'),
    listenCredit: lib.func('int ahb_listen_credit(uint64_t listener, int n)'),
    unlisten: lib.func('void ahb_unlisten(uint64_t listener)'),
  };
  const n = (v: unknown): number => Number(v);
  const out = new BigUint64Array(2);
  loaded = {
    start: (settings) => n(f.start(toAhbSettings(settings))),
    stop: () => void f.stop(),
    lastError: () => String(f.lastError()),
    ctxNew: (server, chain, key, roots) => n(f.ctxNew(server ? 1 : 0, chain, key, roots)),
    ctxFree: (id) => void f.ctxFree(id),
    clientSession: (ctx, fd, expected) => n(f.clientSession(ctx, fd, expected)),
    serverSession: (ctx, fd, td) => n(f.serverSession(ctx, fd, td)),
    clientStream: (session, fd, authority, headers) => n(f.clientStream(session, fd, authority, headers)),
    answer: (stream, status, fd) => void f.answer(stream, status, fd),
    answerConnect: (stream, fd, timeoutMs) => void f.answerConnect(stream, fd, timeoutMs),
    closeStream: (stream) => void f.closeStream(stream),
    closeSession: (session, graceful) => void f.closeSession(session, graceful ? 1 : 0),
    closeSessionNotice: (session) => void f.closeSession(session, 2),
    streamBytes: (stream) => (n(f.streamBytes(stream, out)) === 0 ? [Number(out[0]), Number(out[1])] : undefined),
    listen: (fd, ipv6, credits) => n(f.listen(fd, ipv6 ? 1 : 0, credits)),
    listenCredit: (listener, count) => n(f.listenCredit(listener, count)) === 0,
    unlisten: (listener) => void f.unlisten(listener),
    spiffeCheck: (uri, td) => {
      const r: unknown = f.spiffeCheck(uri, td);
      return typeof r === 'string' ? r : undefined;
    },
  };
  return loaded;
}
