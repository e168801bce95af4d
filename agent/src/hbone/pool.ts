// The HBONE client pool, written once: which connection carries a new CONNECT stream, keyed by (source identity,
// destination identity, destination address, source IP). The transport (the native relay) dials and closes; the pool decides.
// Invariants: at most min(maxStreams, peer's limit) streams per connection; one dial at a time per key; connections made
// with a rotated or expired certificate take no new streams; idle ones are closed; a failed dial is AMB_ERR_HBONE_CONNECT.
import { AmbientError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { formatHostPort } from '../protocol/address.js';
import { INBOUND_HBONE_PORT } from '../redirect/constants.js';

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
  /** TCP connect, then TLS + HTTP/2 handshake: each must finish within this. */
  connectTimeoutMs: number;
  /** How long a CONNECT may wait for the peer's answer before the stream is reset and the app's connection refused. */
  answerTimeoutMs: number;
}

export const DEFAULT_POOL_OPTIONS: PoolOptions = {
  maxStreamsPerConnection: 100,
  idleTimeoutMs: 5 * 60_000,
  connectTimeoutMs: 10_000,
  // The peer answers once its upstream connect is done (its own 10 s limit): three times that is a peer that never will.
  answerTimeoutMs: 30_000,
};

export interface PoolStats {
  connectionsOpened: number;
  connectionsOpen: number;
  streamsOpened: number;
  connectFailures: number;
}

export const poolKey = (t: Omit<HboneTarget, 'ns'>): string => `${t.srcIdentity}|${t.dstIdentity}|${formatHostPort(t.dstIp, INBOUND_HBONE_PORT)}|${t.srcIp}`;

/** One connection of the pool: the transport's handle and what the pool decides with. */
export interface PooledConnection<H> {
  readonly handle: H;
  readonly key: string;
  /** Serial of our certificate on this connection: after a rotation, new streams go to connections made with the new one. */
  readonly serial: string;
  /** Earliest expiry of the two certificates the handshake used; past it the connection takes no new streams. */
  validUntil: number;
  /** Streams open on it. */
  active: number;
  /** Streams it may carry at once: maxStreamsPerConnection, lowered to the peer's SETTINGS_MAX_CONCURRENT_STREAMS. */
  limit: number;
  /** Up and in rotation: takes new streams. */
  open: boolean;
  idleTimer: NodeJS.Timeout | undefined;
  /** Counted in stats.connectionsOpen (it came up and was listed). */
  counted: boolean;
}

/** What the pool needs from whoever carries the bytes. */
export interface PoolTransport<H> {
  /** Serial of our current certificate for `identity` (loaded if needed). */
  currentSerial(identity: string): Promise<string>;
  /**
   * Dials `target` and completes its handshake; resolves with the peer certificate's expiry (ms since the epoch, 0 when
   * unknown). Calls `opened` as soon as the connection has a handle, before the handshake ends: the transport's events
   * about it (closed, peerSettings, peerGoaway) may arrive before the dial resolves.
   */
  dial(target: HboneTarget, opened: (handle: H, serial: string, notAfter: number) => void): Promise<number>;
  /** Ends a connection; `graceful` lets its open streams finish. */
  close(handle: H, graceful: boolean): void;
}

export class HbonePool<H> {
  readonly stats: PoolStats = { connectionsOpened: 0, connectionsOpen: 0, streamsOpened: 0, connectFailures: 0 };
  /** Connections in rotation, per key. */
  private conns = new Map<string, PooledConnection<H>[]>();
  /** Every connection the transport has not reported closed, by handle (in rotation, retired, or still handshaking). */
  private byHandle = new Map<H, PooledConnection<H>>();
  private dialing = new Map<string, Promise<PooledConnection<H>>>();

  constructor(private readonly transport: PoolTransport<H>, private readonly opts: PoolOptions, private readonly log: Logger) {}

  /**
   * A connection with a free stream slot for `target`, dialling one (once per key at a time) when none has room.
   * Connections made with a previous (rotated) or expired certificate are retired: their open streams finish on them.
   */
  async acquire(target: HboneTarget): Promise<PooledConnection<H>> {
    const key = poolKey(target);
    try {
      for (;;) {
        const serial = await this.transport.currentSerial(target.srcIdentity);
        const now = Date.now();
        for (const c of this.conns.get(key) ?? []) {
          if (c.serial !== serial || now >= c.validUntil) this.retire(c, true);
        }
        const free = (this.conns.get(key) ?? []).find((c) => c.open && c.active < c.limit);
        if (free) return free;
        const pending = this.dialing.get(key);
        if (pending) {
          // Someone is already dialling this key: wait for it (sharing its failure), then look for room again.
          await pending;
          continue;
        }
        const dial = this.dial(key, target).finally(() => this.dialing.delete(key));
        this.dialing.set(key, dial);
        return await dial;
      }
    } catch (err) {
      // Counted once per failed attempt, whether the certificate, the dial or the handshake failed.
      this.stats.connectFailures++;
      throw err;
    }
  }

  /** A stream was opened on `c` (after acquire). */
  streamOpened(c: PooledConnection<H>): void {
    c.active++;
    if (c.idleTimer) clearTimeout(c.idleTimer);
    c.idleTimer = undefined;
    this.stats.streamsOpened++;
  }

  /** A stream of `c` ended: a retired connection with none left is closed, an idle one after idleTimeoutMs. */
  streamClosed(c: PooledConnection<H>): void {
    c.active--;
    if (c.active > 0 || !this.byHandle.has(c.handle)) return;
    if (!c.open) {
      this.transport.close(c.handle, true);
      return;
    }
    c.idleTimer = setTimeout(() => {
      if (c.active === 0) this.retire(c, true);
    }, this.opts.idleTimeoutMs);
    c.idleTimer.unref();
  }

  /** The peer's SETTINGS_MAX_CONCURRENT_STREAMS (0: none given). */
  peerSettings(handle: H, maxStreams: number): void {
    const c = this.byHandle.get(handle);
    if (c && maxStreams > 0) c.limit = Math.min(this.opts.maxStreamsPerConnection, maxStreams);
  }

  /** The peer sent GOAWAY: no new streams on it; the open ones finish. */
  peerGoaway(handle: H): void {
    const c = this.byHandle.get(handle);
    if (c) this.retire(c, false);
  }

  /** The transport closed a connection. False when it is none of the pool's (a server session). */
  closed(handle: H): boolean {
    const c = this.byHandle.get(handle);
    if (!c) return false;
    this.byHandle.delete(handle);
    c.open = false;
    this.unlist(c);
    if (c.idleTimer) clearTimeout(c.idleTimer);
    if (c.counted) this.stats.connectionsOpen--;
    return true;
  }

  /** Closes every connection from one source pod (it left the mesh); their open streams finish. */
  closeFrom(srcIp: string): void {
    for (const [key, list] of this.conns) {
      if (!key.endsWith(`|${srcIp}`)) continue;
      for (const c of list) this.retire(c, true);
      this.conns.delete(key);
    }
  }

  /** Forgets every connection (the transport closed them all at once); dials in flight fail on their own. */
  clear(): void {
    for (const c of this.byHandle.values()) if (c.idleTimer) clearTimeout(c.idleTimer);
    this.byHandle.clear();
    this.conns.clear();
  }

  private async dial(key: string, t: HboneTarget): Promise<PooledConnection<H>> {
    const started = Date.now();
    const peer = formatHostPort(t.dstIp, INBOUND_HBONE_PORT);
    const made: { conn?: PooledConnection<H> } = {};
    try {
      const peerNotAfter = await this.transport.dial(t, (handle, serial, notAfter) => {
        made.conn = { handle, key, serial, validUntil: notAfter, active: 0, limit: this.opts.maxStreamsPerConnection, open: false, idleTimer: undefined, counted: false };
        this.byHandle.set(handle, made.conn);
      });
      const c = made.conn;
      if (!c) throw new Error('the transport made no connection');
      // Up and closed in the same batch of events: nothing to list.
      if (!this.byHandle.has(c.handle)) throw new Error('connection closed as it came up');
      if (peerNotAfter > 0) c.validUntil = Math.min(c.validUntil, peerNotAfter);
      c.open = true;
      c.counted = true;
      this.conns.set(key, [...(this.conns.get(key) ?? []), c]);
      this.stats.connectionsOpened++;
      this.stats.connectionsOpen++;
      this.log.debug({ peer, peerIdentity: t.dstIdentity, ms: Date.now() - started, serial: c.serial }, 'hbone connection established');
      return c;
    } catch (err) {
      throw new AmbientError('AMB_ERR_HBONE_CONNECT', `HBONE connection to ${peer} (${t.dstIdentity}) failed: ${(err as Error).message}`, { cause: err });
    }
  }

  private unlist(c: PooledConnection<H>): void {
    const list = (this.conns.get(c.key) ?? []).filter((x) => x !== c);
    if (list.length) this.conns.set(c.key, list);
    else this.conns.delete(c.key);
  }

  /** Takes a connection out of rotation; `close` ends it gracefully (open streams finish). */
  private retire(c: PooledConnection<H>, close: boolean): void {
    c.open = false;
    this.unlist(c);
    if (close) this.transport.close(c.handle, true);
  }
}
