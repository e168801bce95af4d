// One relayed connection as the access log, `ambient-node conns` and the metrics see it: its two ends, how it is
// secured and how much it carried. Pure shapes and formatting; the forwarder fills them in from its sockets.
import type { Peer } from '../admin/metrics.js';
import type { ServiceRef } from '../workload/service-table.js';

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
  /** The application-level destination: the address (for a Service, the endpoint's IP and target port) the bytes are
   * for; the ClusterIP itself when a Service connection was refused before an endpoint was chosen. */
  dst: Endpoint;
  /** The HBONE tunnel's far (outbound) or near (inbound) end, `podIP:15008`, when the connection travels in HBONE. */
  tunnelAddr?: string;
  /** The Service the client addressed (outbound: its ClusterIP; inbound: the Service whose endpoint this is). */
  service?: ServiceRef;
  /** Outbound through a Service: the ClusterIP and port the app connected to. */
  serviceAddr?: string;
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
 * The access log line of a finished connection, with ztunnel's field names and meanings: `dst.addr` is the TCP peer (the
 * tunnel's `podIP:15008` in HBONE), `dst.hbone_addr` the CONNECT target inside it, `dst.service` the Service's host name.
 * Identities appear only when mutual TLS verified them. `connection failed` for a connection refused before any byte
 * was relayed. Pure.
 */
export function accessLogLine(c: ConnectionInfo, o: ConnectionOutcome, refused = false): AccessLogLine {
  const fields: Record<string, string | number> = {};
  const end = (prefix: 'src' | 'dst', e: Endpoint): void => {
    if (prefix === 'dst' && c.tunnelAddr) {
      fields['dst.addr'] = c.tunnelAddr;
      fields['dst.hbone_addr'] = e.addr;
    } else fields[`${prefix}.addr`] = e.addr;
    if (prefix === 'dst' && c.service) fields['dst.service'] = c.service.hostname;
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
