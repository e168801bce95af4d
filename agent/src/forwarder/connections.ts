// One relayed connection as the access log, `ambient-node conns` and the metrics see it: its two ends, how it is
// secured and how much it carried. Pure shapes and formatting; the forwarder fills them in from its sockets.
import type { Peer } from '../admin/metrics.js';

export type Direction = 'outbound' | 'inbound';

/** One end of a connection: its address and, when known, the workload behind it. */
export interface Endpoint extends Peer {
  addr: string;
}

export interface ConnectionInfo {
  id: number;
  direction: Direction;
  /** The pod this agent serves on this connection (`ns/name`). */
  pod: string;
  src: Endpoint;
  dst: Endpoint;
  /** The HBONE tunnel's far (outbound) or near (inbound) address, when the connection travels in HBONE. */
  hboneAddr?: string;
  mtls: boolean;
  /** Epoch milliseconds. */
  startedAt: number;
}

/** What `ambient-node conns` lists: an open connection with its byte counts so far. */
export interface ConnectionSnapshot extends ConnectionInfo {
  /** Bytes from src toward dst. */
  bytesSent: number;
  /** Bytes from dst toward src. */
  bytesRecv: number;
  durationMs: number;
}

export interface ConnectionOutcome {
  bytesSent: number;
  bytesRecv: number;
  durationMs: number;
  /** `-` when nothing went wrong; see RESPONSE_FLAGS. */
  responseFlags: string;
  /** Why it failed or was refused. */
  error?: string;
}

export interface AccessLogLine {
  level: 'info' | 'error';
  msg: 'connection complete' | 'connection failed';
  fields: Record<string, string | number>;
}

/**
 * The access log line of a finished connection, with ztunnel's field names (`src.addr`, `dst.identity`, ...). Identities
 * appear only when mutual TLS verified them. `connection failed` for a connection refused before any byte was relayed.
 * Pure.
 */
export function accessLogLine(c: ConnectionInfo, o: ConnectionOutcome, refused = false): AccessLogLine {
  const fields: Record<string, string | number> = {};
  const end = (prefix: 'src' | 'dst', e: Endpoint): void => {
    fields[`${prefix}.addr`] = e.addr;
    if (prefix === 'dst' && c.hboneAddr) fields['dst.hbone_addr'] = c.hboneAddr;
    if (e.workload) fields[`${prefix}.workload`] = e.workload;
    if (e.namespace) fields[`${prefix}.namespace`] = e.namespace;
    if (c.mtls && e.principal) fields[`${prefix}.identity`] = e.principal;
  };
  end('src', c.src);
  end('dst', c.dst);
  fields.direction = c.direction;
  fields.pod = c.pod;
  fields.connection_security_policy = c.mtls ? 'mutual_tls' : 'none';
  fields.bytes_sent = o.bytesSent;
  fields.bytes_recv = o.bytesRecv;
  fields.duration = `${Math.round(o.durationMs)}ms`;
  fields.response_flags = o.responseFlags;
  if (o.error) fields.error = o.error;
  const failed = refused || o.error !== undefined;
  return { level: failed ? 'error' : 'info', msg: refused ? 'connection failed' : 'connection complete', fields };
}
