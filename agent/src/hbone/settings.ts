// HBONE's protocol settings, the one source: HTTP/2 windows, frame size, stream and header limits, keepalive and the
// 15008 side's limits; relaySettings() joins them with tls.ts's suites and ALPN into what the native relay starts with.
// Numbers follow ztunnel's (reference/ztunnel-hbone-and-peers.md 1.6): large windows and frames for throughput.
import { AmbientError } from '../errors.js';
import { HBONE_ALPN, HBONE_CIPHERSUITES } from './tls.js';

/** HTTP/2 settings of both roles (the relay advertises them and enforces the limits on what it receives). */
export interface Http2Settings {
  /** SETTINGS_INITIAL_WINDOW_SIZE: bytes a stream may receive before the app reads them. */
  streamWindow: number;
  /** The connection's receive window (all streams together). */
  connectionWindow: number;
  /** SETTINGS_MAX_FRAME_SIZE. */
  maxFrameSize: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE of the 15008 side, enforced on requests. */
  serverMaxHeaderList: number;
  /** SETTINGS_MAX_HEADER_LIST_SIZE of client connections, enforced on responses. */
  clientMaxHeaderList: number;
  /** SETTINGS_MAX_CONCURRENT_STREAMS of the 15008 side, and the most requests of one connection in progress at once. */
  serverMaxConcurrentStreams: number;
  /** Streams a client connection may open before the peer's SETTINGS arrive. */
  peerMaxConcurrentStreamsBeforeSettings: number;
  /** Longest :method and :authority accepted on 15008 (an authority is ip:port, or host:port for double HBONE). */
  maxMethod: number;
  maxAuthority: number;
}

export const HTTP2_SETTINGS: Http2Settings = {
  streamWindow: 4 * 1024 * 1024,
  connectionWindow: 16 * 1024 * 1024,
  maxFrameSize: 1024 * 1024,
  serverMaxHeaderList: 64 * 1024,
  clientMaxHeaderList: 16 * 1024,
  serverMaxConcurrentStreams: 200,
  peerMaxConcurrentStreamsBeforeSettings: 100,
  maxMethod: 32,
  maxAuthority: 1024,
};

export interface KeepaliveOptions {
  /** PING this often (ztunnel: 10 s). */
  intervalMs: number;
  /** Drop the connection when a PING is not answered within this (ztunnel: 20 s). */
  timeoutMs: number;
}

export const DEFAULT_KEEPALIVE: KeepaliveOptions = { intervalMs: 10_000, timeoutMs: 20_000 };

/**
 * Limits of the 15008 side against clients that hold resources without doing anything.
 * Each may be overridden from the agent's environment (AMBIENT_HBONE_*, a non-negative integer; 0 = no limit).
 */
export interface ServerLimits {
  /** TLS + HTTP/2 handshake (up to the client's SETTINGS) must finish within this (ms). */
  handshakeTimeoutMs: number;
  /** Connections still handshaking per node (agent) at once; beyond it new ones are closed at once and counted. */
  maxHandshaking: number;
  /** A server session with no stream for this long is closed with GOAWAY (ms; clients close theirs after 5 min). */
  idleTimeoutMs: number;
  /** How long a stream closed in order may hold received bytes while its app takes none of them (ms); then it is reset. */
  unreadLingerMs: number;
}

export const DEFAULT_SERVER_LIMITS: ServerLimits = { handshakeTimeoutMs: 10_000, maxHandshaking: 1024, idleTimeoutMs: 10 * 60_000, unreadLingerMs: 30_000 };

const LIMIT_ENV: Record<keyof ServerLimits, string> = {
  handshakeTimeoutMs: 'AMBIENT_HBONE_HANDSHAKE_TIMEOUT_MS',
  maxHandshaking: 'AMBIENT_HBONE_MAX_HANDSHAKING',
  idleTimeoutMs: 'AMBIENT_HBONE_IDLE_TIMEOUT_MS',
  unreadLingerMs: 'AMBIENT_HBONE_UNREAD_LINGER_MS',
};

/** The limits in force: defaults, overridden by the environment. Throws naming the variable for a bad value. */
export function serverLimits(env: NodeJS.ProcessEnv = process.env): ServerLimits {
  const out = { ...DEFAULT_SERVER_LIMITS };
  for (const [key, name] of Object.entries(LIMIT_ENV) as Array<[keyof ServerLimits, string]>) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    if (!/^\d{1,9}$/.test(v)) throw new AmbientError('AMB_ERR_CONFIG', `${name} must be a non-negative integer, got ${JSON.stringify(v)}`);
    out[key] = Number(v);
  }
  return out;
}

/**
 * Everything the native relay takes at start (struct ahb_settings in agent/native/hbone-relay/ahb.h, field for field;
 * native-lib.ts maps the names). The relay checks each against its range and refuses to start on a bad one.
 */
export interface RelaySettings extends Http2Settings {
  keepalive: KeepaliveOptions;
  handshakeTimeoutMs: number;
  idleTimeoutMs: number;
  unreadLingerMs: number;
  /** TLS 1.3 suites, OpenSSL names joined by ':'. */
  ciphersuites: string;
  /** The one ALPN protocol offered and accepted. */
  alpn: string;
}

/** The relay's settings: HTTP2_SETTINGS, the keepalive, the server limits in force, tls.ts's suites and ALPN. Pure. */
export function relaySettings(limits: ServerLimits, http2: Http2Settings = HTTP2_SETTINGS, keepalive: KeepaliveOptions = DEFAULT_KEEPALIVE): RelaySettings {
  return {
    ...http2,
    keepalive: { ...keepalive },
    handshakeTimeoutMs: limits.handshakeTimeoutMs,
    idleTimeoutMs: limits.idleTimeoutMs,
    unreadLingerMs: limits.unreadLingerMs,
    ciphersuites: HBONE_CIPHERSUITES,
    alpn: HBONE_ALPN,
  };
}
