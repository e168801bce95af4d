// The native HBONE data path (the only one): loads the relay library (native-lib.ts), implements HboneDataPath with it
// (per-pod 15001 listeners the library accepts on, outbound streams on the shared pool core, per-pod 15008 listeners
// whose connections go native), dispatches its events.
// Past 500 lines on purpose: the dispatch of the library's events needs the client side (pool, dials, streams) and the
// server side (15008 sessions, their limits) in one place; both are kept here with the checks of what the library refused.
import { readSync } from 'node:fs';
import net from 'node:net';
import { StringDecoder } from 'node:string_decoder';
import { AmbientError } from '../errors.js';
import type { IdentityProvider, TlsMaterial } from '../identity/provider.js';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { close, dupCloexec } from '../platform/libc.js';
import { dialFrom, listenIn, resetFd, serverFd, takeFd } from '../platform/sockets.js';
import { AGENT_MARK, INBOUND_HBONE_PORT } from '../redirect/constants.js';
import { HboneStatusError } from './connect.js';
import type { AcceptedConnection, HboneDataPath, HboneInboundRequest, HboneListener, HboneOutbound, HboneStream, HboneStreamEnd, ListenSocket, OutboundListener } from './data-path.js';
import { MAX_EVENT_LINE, type NativeEvent, type NativeLib, encodeHeaders, loadNativeLib, parseEvent } from './native-lib.js';
import { LineSplitter } from '../protocol/line-splitter.js';
import { formatHostPort, normalizeIp, type IpFamily } from '../protocol/address.js';
import { DEFAULT_POOL_OPTIONS, type HboneTarget, HbonePool, type PoolOptions, type PoolStats, type PooledConnection } from './pool.js';
import { type RelaySettings, type ServerLimits, relaySettings, serverLimits } from './settings.js';

/** Between a server session's shutdown notice and its final GOAWAY: well over a round trip between nodes. */
const SHUTDOWN_NOTICE_MS = 1000;
/** A stream refused before it carried anything is opened again this many times (RFC 9113 §8.7: it was not processed). */
const CONNECT_RETRIES = 1;

/**
 * "accepted" events an outbound listener may have reported that the agent has not taken yet (ahb_listen's credits): the
 * bound on a pod's connections between the relay and the forwarder; more wait in the pod's accept queue.
 */
export const ACCEPT_CREDITS = 64;
/**
 * Credits go back to a listener once this many connections were taken from it (not one by one: each grant is a command
 * that wakes the relay thread). The listener keeps at least ACCEPT_CREDITS - GRANT_AFTER - (events in flight),
 * and every event in flight is taken and counted, so it never waits on a grant that does not come.
 */
export const GRANT_AFTER = ACCEPT_CREDITS / 2;
/** How long the connections a closed listener had already accepted may still arrive (events in flight: milliseconds). */
const CLOSED_LISTENER_GRACE_MS = 5_000;

/** An outbound listener of the library: where its connections go, and how many were taken since the last grant. */
interface OutboundEntry {
  onAccepted: (c: AcceptedConnection) => void;
  onError: (error: string, gone: boolean) => void;
  /** open; drain: closed, connections already accepted still handed over; cut: closed, those reset. */
  state: 'open' | 'drain' | 'cut';
  /** Connections taken since the last grant of credits. */
  taken: number;
}

/** A TLS context of the library for one identity's certificate. */
interface TlsCtx {
  id: number;
  serial: string;
  notAfter: number;
}

const ctxKey = (server: boolean, identity: string): string => `${server ? 'server' : 'client'}|${identity}`;

/** A client session of the library in the pool, by its session id. */
type ClientSession = PooledConnection<number>;

interface StreamWaiter {
  session?: ClientSession;
  /** retryFd: the stream was refused before anything was sent, and the app's socket is handed back (the caller owns it). */
  onStatus?: (status: number, error?: string, retryFd?: number) => void;
  onClosed: (end: HboneStreamEnd) => void;
}

interface ServerSessionInfo {
  peerAddress: string;
  peerPort: number;
  localAddress: string;
  onRequest: (r: HboneInboundRequest) => void;
  onRefused: (reason: string) => void;
  listener: Set<number>;
  /** Still in its TLS + HTTP/2 handshake (counted in handshaking). */
  handshaking: boolean;
  /** Requests handed to onRequest and not answered yet (the agent's work in progress for this connection). */
  unanswered: number;
}

/** The 15008 side's defences, per node: handshakes in progress, refused over the cap, timed out. */
export interface NativeServerStats {
  handshaking: number;
  handshakesRefused: number;
  handshakeTimeouts: number;
  /** Requests answered 503 without a dial: their stream was reset in the same batch of events, or their connection had
   * serverMaxConcurrentStreams (settings.ts) requests in progress already. */
  requestsDropped: number;
}

/** The outbound pool's counters, and the client streams opened again after a refusal (native.ts). */
export interface NativeClientStats extends PoolStats {
  /** Client streams refused before they carried anything (REFUSED_STREAM, a GOAWAY that crossed them) and opened again. */
  streamsRetried: number;
}

/** Calls the library refused (it returned 0: out of memory; it closed the fd and sends no event for them). */
export interface NativeRefusals {
  clientSessions: number;
  serverSessions: number;
  clientStreams: number;
}

export interface NativeHboneOptions {
  pool?: Partial<PoolOptions>;
  limits?: Partial<ServerLimits>;
  /**
   * The data plane failed for good: the library ended its event socket (it could not queue an event), so no session's
   * end would ever be reported. Every pending dial and stream has been failed and the library stopped when this runs.
   */
  onFatal?: (err: AmbientError<'AMB_ERR_NATIVE_LIB'>) => void;
}

export class NativeHbone implements HboneDataPath {
  private lib: NativeLib | undefined;
  private events: net.Socket | undefined;
  readonly serverStats: NativeServerStats = { handshaking: 0, handshakesRefused: 0, handshakeTimeouts: 0, requestsDropped: 0 };
  readonly refusals: NativeRefusals = { clientSessions: 0, serverSessions: 0, clientStreams: 0 };
  /** Client streams refused before they carried anything and opened again (a peer's GOAWAY crossed them): in stats. */
  private streamsRetried = 0;
  private split = this.newSplitter();
  private readonly opts: PoolOptions;
  private readonly limits: ServerLimits;
  /** What the relay starts with (settings.ts, tls.ts and the limits in force). */
  readonly settings: RelaySettings;
  private readonly onFatal: ((err: AmbientError<'AMB_ERR_NATIVE_LIB'>) => void) | undefined;
  /** When the last "too many handshakes" warning was logged, and how many refusals since. */
  private refusedWarnAt = 0;
  private refusedSinceWarn = 0;
  /** Client sessions: which one carries a new outbound stream. */
  private readonly pool: HbonePool<number>;
  private waitingUp = new Map<number, { resolve: (notAfter: number) => void; reject: (err: Error) => void }>();
  private serverSessions = new Map<number, ServerSessionInfo>();
  private streams = new Map<number, StreamWaiter>();
  /** Outbound listeners by library id (closed ones for CLOSED_LISTENER_GRACE_MS: their accepted connections in flight). */
  private outListeners = new Map<number, OutboundEntry>();
  /** TLS contexts per (role, identity): made once per certificate, replaced on renewal (open sessions keep theirs). */
  private ctxs = new Map<string, TlsCtx>();
  private unsubscribe: (() => void) | undefined;

  constructor(private readonly identities: IdentityProvider, private readonly log: Logger, options: NativeHboneOptions = {}) {
    this.opts = { ...DEFAULT_POOL_OPTIONS, ...options.pool };
    this.limits = { ...serverLimits(), ...options.limits };
    this.settings = relaySettings(this.limits);
    this.onFatal = options.onFatal;
    this.pool = new HbonePool<number>({
      currentSerial: async (identity) => (await this.ctx(false, identity)).serial,
      dial: (target, opened) => this.dialSession(target, opened),
      close: (id, graceful) => this.lib?.closeSession(id, graceful),
    }, this.opts, log);
  }

  /** The outbound pool's counters (connections dialled and open, streams, failures) and the streams opened again. */
  get stats(): NativeClientStats {
    return { ...this.pool.stats, streamsRetried: this.streamsRetried };
  }

  /** Loads the library and starts its loop thread with the settings. Throws when the library is missing or cannot start. */
  start(): void {
    if (this.lib) return;
    const lib = loadNativeLib();
    const fd = lib.start(this.settings);
    if (fd < 0) throw new AmbientError('AMB_ERR_NATIVE_LIB', `native HBONE data plane did not start: ${lib.lastError()}`);
    this.lib = lib;
    const events = new net.Socket({ fd, readable: true, writable: true });
    events.setEncoding('utf8');
    events.on('data', (chunk: string) => {
      const evs: NativeEvent[] = [];
      for (const line of this.split.push(chunk)) {
        const ev = parseEvent(line);
        if (ev) evs.push(ev);
        else this.log.warn({ line: line.slice(0, 200) }, 'native data plane sent an unknown event');
      }
      const closing = closedIn(evs);
      for (const ev of evs) this.dispatch(ev, closing);
    });
    events.on('error', (err) => this.log.error({ error: err.message }, 'native data plane event socket failed'));
    // Only stop() closes it on purpose; otherwise the library shut it because it could not queue an event.
    events.on('close', () => {
      if (this.events === events) this.failed();
    });
    events.unref();
    this.events = events;
    this.unsubscribe = this.identities.onRenewed((identity) => {
      for (const role of ['client', 'server']) this.dropCtx(`${role}|${identity}`);
    });
  }

  /** Closes every session and stream and stops the loop thread; pending dials and streams fail with `reason`. */
  stop(reason = 'native data plane stopped'): void {
    const lib = this.lib;
    if (!lib) return;
    this.unsubscribe?.();
    this.pool.clear();
    lib.stop();
    for (const key of [...this.ctxs.keys()]) this.dropCtx(key);
    const events = this.events;
    this.events = undefined;
    if (events) this.releaseUnread(events);
    events?.destroy();
    this.split = this.newSplitter(); // a line the library never finished is not glued to a restarted one's first
    this.lib = undefined;
    for (const w of this.waitingUp.values()) w.reject(new AmbientError('AMB_ERR_NATIVE_LIB', reason));
    this.waitingUp.clear();
    for (const [, w] of this.streams) {
      w.onStatus?.(-1, reason);
      w.onClosed({ bytesIn: 0, bytesOut: 0, error: reason, reset: true });
    }
    this.streams.clear();
    this.outListeners.clear(); // the library closed its listening fds; the forwarders close theirs
    this.serverSessions.clear();
    this.serverStats.handshaking = 0;
  }

  private newSplitter(): LineSplitter {
    return new LineSplitter(MAX_EVENT_LINE, (length, head) =>
      this.log.error({ length, head }, `native data plane sent an event line longer than ${MAX_EVENT_LINE} characters: dropped`));
  }

  /**
   * The events the library sent before it stopped that were not read yet: nobody will act on them, but a "status" event
   * handing an app socket back ("retryFd") gives this process an fd, reset here so the app sees its connection end
   * instead of hanging. Read synchronously: the library has stopped (its end is closed), so the read ends.
   */
  private releaseUnread(events: net.Socket): void {
    const fd = (events as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (typeof fd !== 'number' || fd < 0) return;
    const buf = Buffer.alloc(64 * 1024);
    const decoder = new StringDecoder('utf8');
    let text = '';
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf);
      } catch {
        break; // EAGAIN: nothing more buffered
      }
      if (n <= 0) break;
      text += decoder.write(buf.subarray(0, n));
    }
    for (const line of this.split.push(text + decoder.end())) {
      const ev = parseEvent(line);
      if (ev?.ev === 'status' && ev.retryFd !== undefined) resetFd(ev.retryFd);
      if (ev?.ev === 'accepted') resetFd(ev.fd);
    }
  }

  /**
   * The event socket ended without stop(): the library could not queue an event and closed everything, so the events'
   * contract no longer holds. Fails every pending dial and stream, stops the library and reports it (onFatal).
   */
  private failed(): void {
    const reason = 'native HBONE data plane ended its event socket (it could not queue an event): every HBONE connection is closed';
    this.log.error({ pendingDials: this.waitingUp.size, streams: this.streams.size }, reason);
    this.stop(reason);
    this.onFatal?.(new AmbientError('AMB_ERR_NATIVE_LIB', reason));
  }

  /** A call the library refused (returned 0): counted; logged the first time of each kind, as it means memory ran out. */
  private refusedByLibrary(kind: keyof NativeRefusals, what: string): AmbientError<'AMB_ERR_NATIVE_LIB'> {
    const err = new AmbientError('AMB_ERR_NATIVE_LIB', `native HBONE data plane could not take ${what}: ${this.lib?.lastError() ?? 'not started'}`);
    if (this.refusals[kind]++ === 0) this.log.error({ error: err.message, kind }, 'native data plane refused a call (later ones are only counted)');
    return err;
  }

  private need(): NativeLib {
    if (!this.lib) throw new AmbientError('AMB_ERR_NATIVE_LIB', 'native HBONE data plane is not started');
    return this.lib;
  }

  private dropCtx(key: string): void {
    const c = this.ctxs.get(key);
    if (!c) return;
    this.ctxs.delete(key);
    this.lib?.ctxFree(c.id);
  }

  /** The TLS context for an identity's current certificate (client or server side). */
  private async ctx(server: boolean, identity: string): Promise<TlsCtx> {
    const key = ctxKey(server, identity);
    const cached = this.ctxs.get(key);
    if (cached && Date.now() < cached.notAfter) return cached;
    const m: TlsMaterial = await this.identities.material(identity);
    const again = this.ctxs.get(key);
    if (again && again.serial === m.serial) return again;
    const lib = this.need();
    const id = lib.ctxNew(server, m.chainPem, m.keyPem, m.rootsPem);
    if (!id) throw new AmbientError('AMB_ERR_NATIVE_TLS', `TLS context for ${identity}: ${lib.lastError()}`);
    if (again) this.dropCtx(key);
    const entry = { id, serial: m.serial, notAfter: m.notAfter.getTime() };
    this.ctxs.set(key, entry);
    return entry;
  }

  /**
   * Runs `use` with the context that is current for (role, identity) at that very moment, in the same synchronous step
   * as the check: a renewal frees the previous context (dropCtx), so a dial must not hand the library a context it
   * picked before awaiting its TCP connect. The library takes its own reference when the session call is made.
   */
  private async withCurrentCtx<T>(server: boolean, identity: string, use: (ctx: TlsCtx) => T): Promise<T> {
    const key = ctxKey(server, identity);
    for (let attempt = 0; attempt < 5; attempt++) {
      const ctx = await this.ctx(server, identity);
      if (this.ctxs.get(key) === ctx) return use(ctx);
    }
    throw new AmbientError('AMB_ERR_NATIVE_TLS', `TLS context for ${identity} was replaced 5 times during one dial`);
  }

  /** One event; `closing`: streams whose "closed" event is in the same batch (their requests are not worth a dial). */
  private dispatch(ev: NativeEvent, closing: ReadonlySet<number> = new Set()): void {
    switch (ev.ev) {
      case 'accepted': {
        const l = this.outListeners.get(ev.listener);
        if (!l || l.state === 'cut') {
          resetFd(ev.fd); // its pod is gone (or going): the app sees a reset
          return;
        }
        // Kept when a grant fails (out of memory): granted with the next connection taken.
        if (l.state === 'open' && ++l.taken >= GRANT_AFTER && this.lib?.listenCredit(ev.listener, l.taken)) l.taken = 0;
        l.onAccepted({ fd: ev.fd, src: { address: ev.src, port: ev.srcPort }, dst: { address: ev.dst, port: ev.dstPort } });
        return;
      }
      case 'listenerError': {
        const l = this.outListeners.get(ev.listener);
        if (!l) return;
        if (ev.gone && l.state === 'open') l.state = 'cut'; // never made: not listening (the caller closes its fd)
        l.onError(ev.error, ev.gone === 1);
        return;
      }
      case 'up': {
        const w = this.waitingUp.get(ev.session);
        this.waitingUp.delete(ev.session);
        w?.resolve(ev.peerNotAfter);
        const s = this.serverSessions.get(ev.session);
        if (s) {
          this.handshakeDone(s);
          this.log.debug({ peerIdentity: ev.peer, peerSerial: ev.peerSerial, peer: s.peerAddress }, 'hbone client accepted');
        }
        return;
      }
      case 'settings': {
        this.pool.peerSettings(ev.session, ev.maxStreams);
        return;
      }
      case 'goaway': {
        this.pool.peerGoaway(ev.session);
        return;
      }
      case 'sessionClosed': {
        const w = this.waitingUp.get(ev.session);
        this.waitingUp.delete(ev.session);
        w?.reject(new Error(ev.error || 'connection closed'));
        if (this.pool.closed(ev.session)) this.log.debug({ session: ev.session, error: ev.error }, 'hbone connection closed');
        const s = this.serverSessions.get(ev.session);
        if (s) {
          this.serverSessions.delete(ev.session);
          s.listener.delete(ev.session);
          this.handshakeDone(s);
          if (ev.timedOut) this.serverStats.handshakeTimeouts++;
          if (ev.wasUp && ev.goawayCode) {
            // A connection error: the peer broke HTTP/2's rules or its limits (e.g. too many resets, a flood of frames).
            this.log.warn({ peer: s.peerAddress, goawayCode: ev.goawayCode, error: ev.error }, 'hbone client connection closed for a protocol error');
          }
          if (!ev.wasUp && ev.identityRefused) {
            // The handshake worked but the client's identity is not acceptable (no SPIFFE ID, other trust domain).
            s.onRefused(ev.error);
            this.log.warn({ peer: s.peerAddress, reason: ev.error }, 'hbone client refused');
          } else if (!ev.wasUp) {
            s.onRefused(`tls: ${ev.error}`);
            this.log.warn({ error: ev.error, peer: s.peerAddress }, 'hbone handshake refused');
          }
        }
        return;
      }
      case 'status': {
        const onStatus = this.streams.get(ev.stream)?.onStatus;
        if (onStatus) onStatus(ev.status, ev.error, ev.retryFd);
        else if (ev.retryFd !== undefined) resetFd(ev.retryFd); // nobody waits for it any more (timed out, closed)
        return;
      }
      case 'closed': {
        const w = this.streams.get(ev.stream);
        if (!w) return;
        this.streams.delete(ev.stream);
        if (w.session) this.pool.streamClosed(w.session);
        // The library sends a status first; should it ever not, the stream's `ready` still settles.
        w.onStatus?.(-1, ev.error ?? 'stream closed before the CONNECT was answered');
        w.onClosed({
          bytesIn: ev.bytesIn, bytesOut: ev.bytesOut, reset: ev.errored !== 0 || ev.h2Error !== 0,
          ...(ev.connectFailed ? { connectFailed: true } : {}), ...(ev.error ? { error: ev.error } : {}),
        });
        return;
      }
      case 'request': {
        const s = this.serverSessions.get(ev.session);
        if (!s) {
          this.lib?.answer(ev.stream, 503, -1);
          return;
        }
        // Reset already (its end is in this very batch), or too much in progress on this connection: answered at once,
        // without a dial (the library caps this too; the answer tells it the work is over).
        if (closing.has(ev.stream) || s.unanswered >= this.settings.serverMaxConcurrentStreams) {
          this.serverStats.requestsDropped++;
          this.lib?.answer(ev.stream, 503, -1);
          return;
        }
        s.unanswered++;
        let answered = false;
        const answering = (): void => {
          if (answered) throw new Error(`stream ${ev.stream} answered twice`);
          answered = true;
          s.unanswered--;
        };
        const { stream } = this.track(ev.stream, undefined);
        s.onRequest({
          stream, method: ev.method, authority: ev.authority, peerIdentity: ev.peer, peerAddress: s.peerAddress, peerPort: s.peerPort,
          localAddress: s.localAddress,
          answerConnect: (fd, timeoutMs) => {
            answering();
            if (this.lib) this.lib.answerConnect(ev.stream, fd, timeoutMs);
            else close(fd);
          },
          answer: (status) => {
            answering();
            this.lib?.answer(ev.stream, status === 200 ? 503 : status, -1);
          },
        });
        return;
      }
    }
  }

  private handshakeDone(s: ServerSessionInfo): void {
    if (!s.handshaking) return;
    s.handshaking = false;
    this.serverStats.handshaking--;
  }

  /** Counts a connection refused because too many are handshaking; logs at most once a second. */
  private refuseOverCap(peer: string): void {
    this.serverStats.handshakesRefused++;
    this.refusedSinceWarn++;
    const now = Date.now();
    if (now - this.refusedWarnAt < 1000) return;
    this.log.warn({ peer, refused: this.refusedSinceWarn, total: this.serverStats.handshakesRefused, limit: this.limits.maxHandshaking },
      'hbone connections refused: too many handshakes in progress');
    this.refusedWarnAt = now;
    this.refusedSinceWarn = 0;
  }

  /** Registers a stream's end, giving its handle; `session` is released when it closes. */
  private track(id: number, session: ClientSession | undefined): { stream: HboneStream; waiter: StreamWaiter } {
    let resolveClosed!: (end: HboneStreamEnd) => void;
    const closed = new Promise<HboneStreamEnd>((resolve) => (resolveClosed = resolve));
    let ended = false;
    const onClosed = (end: HboneStreamEnd): void => {
      ended = true;
      resolveClosed(end);
    };
    const waiter: StreamWaiter = { onClosed, ...(session ? { session } : {}) };
    this.streams.set(id, waiter);
    let last = { in: 0, out: 0 };
    const stream: HboneStream = {
      id,
      closed,
      bytes: () => {
        const b = this.streams.has(id) ? this.lib?.streamBytes(id) : undefined;
        if (b) last = { in: b[0], out: b[1] };
        return last;
      },
      close: () => this.lib?.closeStream(id),
      get isClosed() {
        return ended;
      },
    };
    void closed.then((end) => (last = { in: end.bytesIn, out: end.bytesOut }));
    return { stream, waiter };
  }

  /**
   * Opens a CONNECT stream to `target` carrying the app socket `down` (an fd never read, owned from the call on: reset
   * when no stream can be opened, or when `cancelled()` says the caller gave up while a connection was being had).
   * A stream refused before anything was sent (REFUSED_STREAM, or a GOAWAY that crossed it, as when the peer's agent
   * hands over to a new one) comes back with the untouched app socket and is opened again, once, on another session;
   * unless close() was called meanwhile (the forwarder's destroy: a policy change, the pod stopping): then the socket is
   * reset and the stream ends.
   */
  async connect(target: HboneTarget, down: number, authority: string, headers: Record<string, string>, cancelled?: () => boolean): Promise<HboneOutbound> {
    let session: ClientSession;
    try {
      session = await this.pool.acquire(target);
    } catch (err) {
      resetFd(down);
      throw err;
    }
    if (cancelled?.()) {
      resetFd(down);
      throw new Error(`connection to ${authority} closed before its HBONE stream opened`);
    }
    let cur = this.openClientStream(session, down, authority, headers); // on a throw, down is closed
    let retries = 0;
    /** close() was called: a stream handed back is not opened again (closing the attempt it was on did nothing). */
    let closedByCaller = false;
    let resolveClosed!: (end: HboneStreamEnd) => void;
    const closed = new Promise<HboneStreamEnd>((resolve) => (resolveClosed = resolve));
    let ended = false;
    const follow = (opened: typeof cur): void => {
      void opened.stream.closed.then((end) => {
        if (opened !== cur || opened.handedBack) return; // a refused attempt: its successor's end counts
        ended = true;
        resolveClosed(end);
      });
    };
    follow(cur);
    const ready = new Promise<void>((resolve, reject) => {
      const fail = (err: Error, end?: HboneStreamEnd): void => {
        if (end) {
          ended = true;
          resolveClosed(end);
        }
        reject(err);
      };
      /** Ends the stream with the handed-back app socket reset (the app sees its connection refused). */
      const giveUp = (fd: number, why: string): void => {
        resetFd(fd);
        fail(new Error(why), { bytesIn: 0, bytesOut: 0, reset: true, error: why });
      };
      const closedWhy = `HBONE stream to ${authority} closed while it was being opened again`;
      const arm = (opened: typeof cur): void => {
        const timer = setTimeout(() => {
          if (!opened.waiter.onStatus) return;
          opened.waiter.onStatus = undefined;
          this.lib?.closeStream(opened.stream.id);
          fail(new Error(`HBONE CONNECT ${authority} was not answered within ${this.opts.answerTimeoutMs} ms`));
        }, this.opts.answerTimeoutMs);
        timer.unref();
        opened.waiter.onStatus = (status, error, retryFd) => {
          opened.waiter.onStatus = undefined;
          clearTimeout(timer);
          if (retryFd !== undefined) {
            opened.handedBack = true;
            const why = `HBONE stream to ${authority} failed: ${error ?? 'refused'}`;
            if (closedByCaller) {
              giveUp(retryFd, closedWhy);
              return;
            }
            if (retries++ >= CONNECT_RETRIES) {
              giveUp(retryFd, why);
              return;
            }
            this.streamsRetried++;
            this.log.debug({ authority, error }, 'hbone stream refused before it was sent; opening it again');
            this.pool.acquire(target).then((next) => {
              if (closedByCaller) {
                giveUp(retryFd, closedWhy);
                return;
              }
              let opened: typeof cur;
              try {
                opened = this.openClientStream(next, retryFd, authority, headers); // on a throw, retryFd is closed
              } catch (err) {
                const e = err instanceof Error ? err : new Error(String(err));
                fail(e, { bytesIn: 0, bytesOut: 0, reset: true, error: e.message });
                return;
              }
              cur = opened;
              follow(cur);
              arm(cur);
            }, (err: unknown) => {
              resetFd(retryFd);
              const e = err instanceof Error ? err : new Error(String(err));
              fail(e, { bytesIn: 0, bytesOut: 0, reset: true, error: e.message });
            });
            return;
          }
          if (status === 200) resolve();
          else if (status > 0) reject(new HboneStatusError(status, authority));
          else reject(new Error(`HBONE stream to ${authority} failed: ${error ?? 'connection closed'}`));
        };
      };
      arm(cur);
    });
    ready.catch(() => undefined);
    return {
      get id() {
        return cur.stream.id;
      },
      bytes: () => cur.stream.bytes(),
      close: () => {
        closedByCaller = true;
        cur.stream.close();
      },
      closed,
      get isClosed() {
        return ended;
      },
      ready,
    };
  }

  /**
   * One CONNECT stream on `session` carrying the app's `fd` (the library owns it from here on); tracked. On a throw the
   * fd is closed: by the library when it refused the call, else here with a reset (not started, or bad headers).
   */
  private openClientStream(session: ClientSession, fd: number, authority: string, headers: Record<string, string>): { stream: HboneStream; waiter: StreamWaiter; handedBack: boolean } {
    this.pool.streamOpened(session);
    let id: number;
    try {
      id = this.need().clientStream(session.handle, fd, authority, encodeHeaders(headers));
    } catch (err) {
      // Thrown before the library was called (need(), encodeHeaders): the fd is still ours.
      this.pool.streamClosed(session);
      resetFd(fd);
      throw err;
    }
    if (!id) {
      // The library closed the app's fd and will send no event for this stream.
      this.pool.streamClosed(session);
      throw this.refusedByLibrary('clientStreams', `a CONNECT stream to ${authority}`);
    }
    return { ...this.track(id, session), handedBack: false };
  }

  listenOutbound(fd: number, family: IpFamily, onAccepted: (c: AcceptedConnection) => void, onError: (error: string, gone: boolean) => void = () => undefined): OutboundListener {
    const lib = this.need();
    const id = lib.listen(dupCloexec(fd), family === 'ipv6', ACCEPT_CREDITS); // the library owns the duplicate
    if (!id) throw new AmbientError('AMB_ERR_NATIVE_LIB', `native HBONE data plane could not take an outbound listener: ${lib.lastError()}`);
    const entry: OutboundEntry = { onAccepted, onError, state: 'open', taken: 0 };
    let closed = false;
    this.outListeners.set(id, entry);
    const isOpen = (): boolean => entry.state === 'open' && this.outListeners.get(id) === entry;
    return {
      get listening() {
        return isOpen();
      },
      get fd() {
        return isOpen() ? fd : undefined;
      },
      close: (drain) => {
        if (closed) {
          if (!drain) entry.state = 'cut'; // after a drain: what is still on its way is reset
          return;
        }
        closed = true;
        close(fd);
        if (entry.state === 'open') this.lib?.unlisten(id); // else the library never made it ("gone")
        entry.state = drain && entry.state === 'open' ? 'drain' : 'cut';
        setTimeout(() => {
          if (this.outListeners.get(id) === entry) this.outListeners.delete(id);
        }, CLOSED_LISTENER_GRACE_MS).unref();
      },
    };
  }

  /** Closes every connection from one source pod (it left the mesh). */
  closeFrom(srcIp: string): void {
    this.pool.closeFrom(srcIp);
  }

  /**
   * The pool's dial: TCP from inside the source pod, then a library client session on it; resolves with the peer's
   * certificate expiry once the session is up (the pool wraps a failure as AMB_ERR_HBONE_CONNECT).
   */
  private async dialSession(t: HboneTarget, opened: (id: number, serial: string, notAfter: number) => void): Promise<number> {
    const raw = await dialFrom(t.ns, { host: t.dstIp, port: INBOUND_HBONE_PORT, mark: AGENT_MARK, timeoutMs: this.opts.connectTimeoutMs, allowHalfOpen: false, paused: true });
    // The certificate may have been renewed while the TCP connect was in flight: hand over the context current now.
    let id: number;
    try {
      id = await this.withCurrentCtx(false, t.srcIdentity, (ctx) => {
        const sid = this.need().clientSession(ctx.id, takeFd(raw), t.dstIdentity);
        // 0: the library closed the fd and will send no event for this session.
        if (!sid) throw this.refusedByLibrary('clientSessions', `a connection to ${t.dstIp}`);
        opened(sid, ctx.serial, ctx.notAfter);
        return sid;
      });
    } catch (err) {
      raw.destroy();
      throw err;
    }
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waitingUp.delete(id);
        this.lib?.closeSession(id, false);
        reject(new Error(`HBONE handshake with ${t.dstIp} timed out`));
      }, this.opts.connectTimeoutMs);
      this.waitingUp.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (err) => {
          clearTimeout(timer);
          reject(err);
        },
      });
    });
  }

  /**
   * A pod's 15008 listener whose TLS connections go native: clients must present a certificate chaining to the roots
   * with a SPIFFE ID in `trustDomain`; each CONNECT is handed to `onRequest`, refusals reported to `onRefused`.
   */
  async listen(
    ns: Netns,
    identity: string,
    trustDomain: string,
    onRequest: (r: HboneInboundRequest) => void,
    onRefused: (reason: string) => void,
    socket: ListenSocket = {},
  ): Promise<HboneListener> {
    try {
      this.need();
      await this.ctx(true, identity); // fail now, not per connection, when there is no certificate
    } catch (err) {
      if (socket.fd !== undefined) close(socket.fd); // ours from the call on, like listenIn's
      throw err;
    }
    const sessions = new Set<number>();
    const { address = '0.0.0.0', ...fdOrReuse } = socket;
    // The peer's address is read here, as text (IPv4 or IPv6): the native library only ever sees the accepted fd.
    const server = await listenIn(ns, { address, port: INBOUND_HBONE_PORT, pauseOnConnect: true, ...fdOrReuse }, (sock) => {
      sock.on('error', () => undefined);
      const info = { peerAddress: normalizeIp(sock.remoteAddress ?? ''), peerPort: sock.remotePort ?? 0, localAddress: formatHostPort(normalizeIp(sock.localAddress ?? ''), sock.localPort ?? 0) };
      // Connections that have not finished TLS + HTTP/2 cost an fd and memory and prove nothing: a bounded number per node.
      const max = this.limits.maxHandshaking;
      if (max > 0 && this.serverStats.handshaking >= max) {
        sock.resetAndDestroy();
        onRefused('too many HBONE handshakes in progress');
        this.refuseOverCap(info.peerAddress);
        return;
      }
      this.serverStats.handshaking++;
      const pending = { handshaking: true };
      const giveUp = (): void => {
        if (!pending.handshaking) return;
        pending.handshaking = false;
        this.serverStats.handshaking--;
      };
      // Handed over in the same step as the check that the context is still current (a renewal frees the previous one).
      const handOver = (ctx: TlsCtx): void => {
        if (sock.destroyed || !this.lib) {
          giveUp();
          return;
        }
        let id: number;
        try {
          id = this.lib.serverSession(ctx.id, takeFd(sock), trustDomain);
        } catch (err) {
          giveUp();
          onRefused(`cannot hand the connection to the native data plane: ${(err as Error).message}`);
          this.log.warn({ error: (err as Error).message }, 'hbone connection refused: hand-over failed');
          return;
        }
        if (!id) {
          // The library closed the fd and will send no event for this session.
          giveUp();
          const err = this.refusedByLibrary('serverSessions', `a connection from ${info.peerAddress}`);
          onRefused(err.message);
          return;
        }
        sessions.add(id);
        // The count moves to the session: released by its "up" (client SETTINGS received) or "sessionClosed".
        pending.handshaking = false;
        this.serverSessions.set(id, { ...info, onRequest, onRefused, listener: sessions, handshaking: true, unanswered: 0 });
      };
      this.withCurrentCtx(true, identity, handOver).catch((err: Error) => {
        giveUp();
        onRefused(`no certificate: ${err.message}`);
        this.log.warn({ error: err.message }, 'hbone connection refused: no certificate');
        sock.destroy();
      });
    });
    return {
      get listening() {
        return server.listening;
      },
      get fd() {
        return serverFd(server);
      },
      close: async () => {
        for (const id of sessions) this.lib?.closeSession(id, false);
        await new Promise<void>((resolve) => server.close(() => resolve()));
      },
      stopAccepting: async () => {
        // The listening fd closes at once (the callback would wait for sockets Node still holds: not awaited).
        server.close();
        // HTTP/2's graceful shutdown: a notice first (no new streams, but a CONNECT already on its way is served), the
        // final GOAWAY a round trip later; a single GOAWAY would refuse a stream that crossed it (the app sees a reset).
        for (const id of sessions) this.lib?.closeSessionNotice(id);
        await new Promise((resolve) => setTimeout(resolve, SHUTDOWN_NOTICE_MS));
        for (const id of sessions) this.lib?.closeSession(id, true);
      },
    };
  }
}

/** Streams whose "closed" event is among `evs` (one batch read from the library). Pure. */
export function closedIn(evs: readonly NativeEvent[]): Set<number> {
  const out = new Set<number>();
  for (const ev of evs) if (ev.ev === 'closed') out.add(ev.stream);
  return out;
}
