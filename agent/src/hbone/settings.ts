// HTTP/2 settings and timers of HBONE, tuned for throughput (large windows and frames) and for detecting dead peers.
// Numbers follow ztunnel's (reference/ztunnel-hbone-and-peers.md 1.6); Node's defaults halve throughput.
import type { Settings } from 'node:http2';

export const STREAM_WINDOW = 4 * 1024 * 1024;
export const CONNECTION_WINDOW = 16 * 1024 * 1024;
export const MAX_FRAME = 1024 * 1024;

export const CLIENT_SETTINGS: Settings = {
  enablePush: false,
  initialWindowSize: STREAM_WINDOW,
  maxFrameSize: MAX_FRAME,
  maxHeaderListSize: 16 * 1024,
};

export const SERVER_SETTINGS: Settings = {
  initialWindowSize: STREAM_WINDOW,
  maxFrameSize: MAX_FRAME,
  maxConcurrentStreams: 200,
  maxHeaderListSize: 64 * 1024,
};

export interface KeepaliveOptions {
  /** PING this often (ztunnel: 10 s). */
  intervalMs: number;
  /** Drop the connection when a PING is not answered within this (ztunnel: 20 s). */
  timeoutMs: number;
}

export const DEFAULT_KEEPALIVE: KeepaliveOptions = { intervalMs: 10_000, timeoutMs: 20_000 };

/**
 * Limits of the 15008 side against clients that hold resources without doing anything (both data paths read them).
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
    if (!/^\d{1,9}$/.test(v)) throw Object.assign(new Error(`${name} must be a non-negative integer, got ${JSON.stringify(v)}`), { code: 'AMB_ERR_CONFIG' });
    out[key] = Number(v);
  }
  return out;
}
