// The HBONE connection pool: mutual-TLS HTTP/2 connections from inside a source pod to a destination pod's 15008,
// keyed by (source identity, destination identity, destination address, source IP); one CONNECT stream per app connection.
// Invariants: at most min(maxStreams, peer's limit) streams per connection; one dial at a time per key; idle ones closed.
import http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import tls from 'node:tls';
import type { IdentityProvider, TlsMaterial } from '../identity/provider.js';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { dialFrom } from '../platform/sockets.js';
import { AGENT_MARK, INBOUND_HBONE_PORT } from '../redirect/constants.js';
import { keepalive } from './keepalive.js';
import { CLIENT_SETTINGS, CONNECTION_WINDOW, DEFAULT_KEEPALIVE, type KeepaliveOptions } from './settings.js';
import { baseTlsOptions, checkServerSpiffe } from './tls.js';

export interface HboneTarget {
  /** The source pod's namespace: connections are dialled from inside it, with the agent mark. */
  ns: Netns;
  srcIp: string;
  srcIdentity: string;
  dstIp: string;
  dstIdentity: string;
}

export interface PoolOptions {
  maxStreamsPerConnection: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  /** How long a CONNECT may wait for the peer's answer before the stream is reset and the app's connection refused. */
  answerTimeoutMs: number;
  keepalive: KeepaliveOptions;
}

export const DEFAULT_POOL_OPTIONS: PoolOptions = {
  maxStreamsPerConnection: 100,
  idleTimeoutMs: 5 * 60_000,
  connectTimeoutMs: 10_000,
  // The peer answers once its upstream connect is done (its own 10 s limit): three times that is a peer that never will.
  answerTimeoutMs: 30_000,
  keepalive: DEFAULT_KEEPALIVE,
};

/** The peer answered the CONNECT with something other than 200. */
export class HboneStatusError extends Error {
  readonly code = 'AMB_ERR_HBONE_STATUS';
  constructor(readonly status: number, authority: string) {
    super(`HBONE CONNECT ${authority} answered ${status}`);
    this.name = 'HboneStatusError';
  }
}

interface PooledConnection {
  session: http2.ClientHttp2Session;
  active: number;
  idleTimer: NodeJS.Timeout | undefined;
  /** Serial of our certificate on this connection: after a rotation, new streams go to connections made with the new one. */
  serial: string;
  /** Earliest expiry of the two certificates the handshake used; past it the connection takes no new streams. */
  validUntil: number;
}

export interface PoolStats {
  connectionsOpened: number;
  connectionsOpen: number;
  streamsOpened: number;
  connectFailures: number;
}

export const poolKey = (t: Omit<HboneTarget, 'ns'>): string => `${t.srcIdentity}|${t.dstIdentity}|${t.dstIp}:${INBOUND_HBONE_PORT}|${t.srcIp}`;

/** Random bytes drawn in bulk: one syscall per 4 KiB instead of two per CONNECT. */
let entropy = Buffer.alloc(0);
let entropyAt = 0;
function randomHex(bytes: number): string {
  if (entropyAt + bytes > entropy.length) {
    entropy = randomBytes(4096);
    entropyAt = 0;
  }
  const hex = entropy.toString('hex', entropyAt, entropyAt + bytes);
  entropyAt += bytes;
  return hex;
}

/**
 * Headers of one CONNECT: the destination endpoint, who asked (`forwarded: for=`, plus `host=` the Service host name
 * when the app addressed a Service, as ztunnel sends it), and a fresh trace id per connection.
 */
export function connectHeaders(authority: string, src: { ip: string; port: number }, baggage: string, serviceHost?: string): http2.OutgoingHttpHeaders {
  return {
    ':method': 'CONNECT',
    ':authority': authority,
    forwarded: `for="${src.ip}:${src.port}"${serviceHost ? `;host=${serviceHost}` : ''}`,
    baggage,
    traceparent: `00-${randomHex(16)}-${randomHex(8)}-00`,
  };
}

export class HbonePool {
  readonly stats: PoolStats = { connectionsOpened: 0, connectionsOpen: 0, streamsOpened: 0, connectFailures: 0 };
  private conns = new Map<string, PooledConnection[]>();
  private dialing = new Map<string, Promise<PooledConnection>>();
  /** Our current material per source identity, so a new stream costs no certificate lookup; dropped on renewal. */
  private materials = new Map<string, TlsMaterial>();
  private readonly opts: PoolOptions;

  constructor(private readonly identities: IdentityProvider, private readonly log: Logger, opts: Partial<PoolOptions> = {}) {
    this.opts = { ...DEFAULT_POOL_OPTIONS, ...opts };
    identities.onRenewed((identity) => this.materials.delete(identity));
  }

  private async material(identity: string): Promise<TlsMaterial> {
    const cached = this.materials.get(identity);
    if (cached && Date.now() < cached.notAfter.getTime()) return cached;
    const m = await this.identities.material(identity);
    this.materials.set(identity, m);
    return m;
  }

  /** Opens one CONNECT stream to target for `authority`; resolves once the peer answered 200. */
  async connect(target: HboneTarget, headers: http2.OutgoingHttpHeaders): Promise<http2.ClientHttp2Stream> {
    const key = poolKey(target);
    let conn: PooledConnection;
    try {
      conn = await this.acquire(key, target);
    } catch (err) {
      // Counted once per failed connection attempt, whether the certificate, the dial or the handshake failed.
      this.stats.connectFailures++;
      throw err;
    }
    conn.active++;
    if (conn.idleTimer) clearTimeout(conn.idleTimer);
    conn.idleTimer = undefined;
    this.stats.streamsOpened++;
    let stream: http2.ClientHttp2Stream;
    try {
      stream = conn.session.request(headers, { endStream: false });
    } catch (err) {
      this.release(conn);
      throw err;
    }
    stream.once('close', () => this.release(conn));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        stream.off('error', onError);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new Error(`HBONE CONNECT ${String(headers[':authority'])} was not answered within ${this.opts.answerTimeoutMs} ms`));
      }, this.opts.answerTimeoutMs);
      timer.unref();
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(err);
      };
      stream.once('error', onError);
      // Closed (reset by the peer with NO_ERROR, or the session went away) without an answer or an error.
      stream.once('close', () => {
        clearTimeout(timer);
        reject(new Error(`HBONE stream to ${String(headers[':authority'])} closed before the CONNECT was answered`));
      });
      stream.once('response', (h) => {
        clearTimeout(timer);
        stream.off('error', onError);
        const status = Number(h[':status']);
        if (status === 200) return resolve(stream);
        stream.close(http2.constants.NGHTTP2_CANCEL);
        reject(new HboneStatusError(status, String(headers[':authority'])));
      });
    });
  }

  /** Closes every connection from one source pod (it left the mesh). */
  closeFrom(srcIp: string): void {
    for (const [key, list] of this.conns) {
      if (!key.endsWith(`|${srcIp}`)) continue;
      for (const c of list) c.session.close();
      this.conns.delete(key);
    }
  }

  close(): void {
    for (const list of this.conns.values()) for (const c of list) c.session.destroy();
    this.conns.clear();
  }

  /**
   * A connection with a free stream slot, dialling one (once per key at a time) when none has room. Connections made
   * with a previous (rotated) or expired certificate take no new streams and close once their streams are done.
   */
  private async acquire(key: string, target: HboneTarget): Promise<PooledConnection> {
    for (;;) {
      const material = await this.material(target.srcIdentity);
      const now = Date.now();
      for (const c of this.conns.get(key) ?? []) {
        if (c.serial !== material.serial || now >= c.validUntil) this.retire(key, c);
      }
      const free = (this.conns.get(key) ?? []).find((c) => !c.session.closed && !c.session.destroyed && c.active < this.limit(c));
      if (free) return free;
      const pending = this.dialing.get(key);
      if (pending) {
        // Someone is already dialling this key: wait for it (sharing its failure), then look for room again.
        await pending;
        continue;
      }
      const dial = this.dial(key, target, material).finally(() => this.dialing.delete(key));
      this.dialing.set(key, dial);
      return dial;
    }
  }

  /** Takes a connection out of rotation; open streams finish on it (graceful close). */
  private retire(key: string, c: PooledConnection): void {
    const list = (this.conns.get(key) ?? []).filter((x) => x !== c);
    if (list.length) this.conns.set(key, list);
    else this.conns.delete(key);
    if (!c.session.closed) c.session.close();
  }

  private limit(c: PooledConnection): number {
    const peer = c.session.remoteSettings.maxConcurrentStreams;
    return Math.min(this.opts.maxStreamsPerConnection, typeof peer === 'number' && peer > 0 ? peer : Infinity);
  }

  private async dial(key: string, t: HboneTarget, material: TlsMaterial): Promise<PooledConnection> {
    const started = Date.now();
    try {
      const raw = await dialFrom(t.ns, { host: t.dstIp, port: INBOUND_HBONE_PORT, mark: AGENT_MARK, timeoutMs: this.opts.connectTimeoutMs, allowHalfOpen: false });
      raw.setNoDelay(true);
      const tlsSocket = tls.connect({
        socket: raw,
        host: t.dstIp, // an IP: Node sends no SNI, as HBONE requires
        ...baseTlsOptions(material),
        checkServerIdentity: (_host, cert) => checkServerSpiffe(t.dstIdentity, cert),
      });
      const session = http2.connect(`https://${t.dstIp}:${INBOUND_HBONE_PORT}`, {
        createConnection: () => tlsSocket,
        settings: CLIENT_SETTINGS,
        maxSessionMemory: 64,
      });
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => session.destroy(new Error(`HBONE handshake with ${t.dstIp} timed out`)), this.opts.connectTimeoutMs);
        session.once('connect', () => {
          clearTimeout(timer);
          session.off('error', reject);
          resolve();
        });
        session.once('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      session.setLocalWindowSize(CONNECTION_WINDOW);
      const peerNotAfter = Date.parse(tlsSocket.getPeerCertificate().valid_to);
      const validUntil = Math.min(material.notAfter.getTime(), Number.isNaN(peerNotAfter) ? Infinity : peerNotAfter);
      const conn: PooledConnection = { session, active: 0, idleTimer: undefined, serial: material.serial, validUntil };
      const clog = this.log.child({ peer: `${t.dstIp}:${INBOUND_HBONE_PORT}`, peerIdentity: t.dstIdentity });
      session.on('error', (err) => clog.debug({ error: err.message }, 'hbone connection error'));
      // The peer's FIN means its agent is gone (or restarting): stop using the connection at once, not at the next PING.
      tlsSocket.once('end', () => session.destroy());
      session.once('close', () => {
        this.stats.connectionsOpen--;
        const list = this.conns.get(key)?.filter((c) => c !== conn) ?? [];
        if (list.length) this.conns.set(key, list);
        else this.conns.delete(key);
        if (conn.idleTimer) clearTimeout(conn.idleTimer);
      });
      keepalive(session, this.opts.keepalive, (err) => clog.warn({ error: err.message }, 'dropping unresponsive hbone connection'));
      this.conns.set(key, [...(this.conns.get(key) ?? []), conn]);
      this.stats.connectionsOpened++;
      this.stats.connectionsOpen++;
      clog.debug({ ms: Date.now() - started, serial: material.serial }, 'hbone connection established');
      return conn;
    } catch (err) {
      throw Object.assign(new Error(`HBONE connection to ${t.dstIp}:${INBOUND_HBONE_PORT} (${t.dstIdentity}) failed: ${(err as Error).message}`, { cause: err }), {
        code: 'AMB_ERR_HBONE_CONNECT',
      });
    }
  }

  private release(conn: PooledConnection): void {
    conn.active--;
    if (conn.active > 0 || conn.session.closed) return;
    conn.idleTimer = setTimeout(() => {
      if (conn.active === 0) conn.session.close();
    }, this.opts.idleTimeoutMs);
    conn.idleTimer.unref();
  }
}
