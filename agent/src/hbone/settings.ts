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
