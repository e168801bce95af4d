// The agent's listeners inside one enrolled pod (15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE; IPv4, and IPv6 too with --capture-ipv6) and the
// relays behind them. Mesh destinations get HBONE; others plain TCP; every upstream socket is made inside the pod, marked (the
// agent mark; toward the pod's own app, the backend's appMark).
// Just past 500 lines on purpose: the three listeners share the per-connection bookkeeping (register, access log, close
// on a policy change); the decisions themselves are pure functions in hbone/connect.ts and forwarder/routing.ts.
import net from 'node:net';
import { HboneStatusError, connectAuthority, connectHeaders, decideInbound } from '../hbone/connect.js';
import type { AcceptedConnection, HboneDataPath, HboneInboundRequest, HboneListener, HboneOutbound, HboneStream, HboneStreamEnd, OutboundListener } from '../hbone/data-path.js';
import type { IdentityProvider } from '../identity/provider.js';
import { AmbientError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { DIAL_TIMEOUT_MS, dialFrom, listenFdIn, listenIn, originalDst, resetFd, serverFd, startDial } from '../platform/sockets.js';
import type { Connection as AuthzConnection, Decision } from '../policy/authorization.js';
import type { MtlsMode } from '../policy/peer-authentication.js';
import { addressesOf, formatHostPort, ipFamily, normalizeIp, type IpFamily } from '../protocol/address.js';
import { AGENT_MARK, INBOUND_HBONE_PORT } from '../redirect/constants.js';
import { replyFamilies, upstreamSource } from '../redirect/reply-routing.js';
import type { ServiceRef } from '../workload/service-table.js';
import { RESPONSE_FLAGS, connectionLabels, type ConnectionObserver, type Peer, type TcpLabels } from '../admin/metrics.js';
import { accessLogLine, type ConnectionInfo, type ConnectionOutcome, type ConnectionSnapshot, type Direction, type Endpoint } from './connections.js';
import { decideOutbound, decidePlaintextInbound, type OutboundContext } from './routing.js';
import { pauseRelay, type PausedRelay } from './relay-pause.js';
import { closeAll } from '../platform/fd-passing.js';
import { close } from '../platform/libc.js';
import type { RelayMeta } from '../handover/protocol.js';
import { LISTENER_ADDRESSES, podListenerKinds, type HandedListeners, type ListenerKind } from '../handover/listener-protocol.js';

export type { Direction } from './connections.js';

export interface DirectionStats {
  opened: number;
  closed: number;
  refused: number;
  /** Refused or closed by an AuthorizationPolicy (also counted in refused when refused at open). */
  denied: number;
  /** Connections carried in HBONE (outbound: tunnelled to a mesh peer; inbound: arrived on 15008). */
  hbone: number;
  /** Bytes from the pod's app toward the peer (outbound) or from the peer toward the app (inbound). */
  bytesFromDownstream: number;
  bytesToDownstream: number;
}

export interface ForwarderStats {
  outbound: DirectionStats;
  inbound: DirectionStats;
  active: number;
  /** Plain TCP relays handed to a successor agent during a take-over (no longer open here). */
  movedOut: number;
  /** Plain TCP relays received from a predecessor agent (also counted as opened in their direction). */
  movedIn: number;
}

/** How often an outbound listener's failing accept() is logged at most (it rests a second after each failure). */
const LISTENER_WARN_EVERY_MS = 10_000;

const emptyStats = (): DirectionStats => ({ opened: 0, closed: 0, refused: 0, denied: 0, hbone: 0, bytesFromDownstream: 0, bytesToDownstream: 0 });

/** Everything the forwarder needs from the rest of the agent, shared by all pods. */
export interface MeshContext extends OutboundContext {
  /** The Service an endpoint address and port belongs to (names inbound connections in telemetry). */
  serviceOfEndpoint?: (ip: string, port: number) => ServiceRef | undefined;
  identities: IdentityProvider;
  /** Who carries HBONE bytes (the native relay): outbound CONNECT streams, the pods' 15008, pooled connections. */
  hbone: HboneDataPath;
  trustDomain: string;
  /** Told of each connection at open and close (metrics); never per byte. */
  connections?: ConnectionObserver;
  /**
   * Where access log lines go (one per finished or refused connection). `complete: false` drops the lines of
   * connections that ended well; failures and refusals are always logged. Default: the forwarder's logger, all lines.
   */
  accessLog?: { log: Logger; complete: boolean };
  /**
   * Inbound source preservation (--preserve-source; required, no default): the upstream socket to the app is transparent and bound to the client's
   * address (the HBONE peer's, or the plaintext client's), so the app sees its client, not the agent. The backends'
   * in-pod pieces bring the app's replies back (redirect/reply-routing.ts).
   */
  preserveSource: boolean;
  /** SO_MARK of the upstream socket to the app (RedirectBackend.appMark: what the backend's in-pod pieces expect). */
  appMark: number;
  /**
   * The families the redirect backend captures (RedirectBackend.captureFamilies): a pod gets IPv6 listeners only when
   * IPv6 is among them (--capture-ipv6), never otherwise (see podListenerKinds).
   */
  captureFamilies: readonly IpFamily[];
}

/** The pod this forwarder serves. */
export interface PodSelf {
  ns: Netns;
  ips: readonly string[];
  identity: string;
  /** Pod name and namespace, for connection metrics. */
  name?: string;
  namespace?: string;
  /** The PeerAuthentication mode for plaintext arriving on a port (re-read per connection: policies change). */
  mtlsMode: (port: number) => Exclude<MtlsMode, 'UNSET'>;
  /** W3C baggage describing this pod, sent on outbound CONNECTs. */
  baggage: string;
  /** AuthorizationPolicy decision for an inbound connection to this pod (re-read per call: policies change). */
  authorize: (source: AuthzConnection['source'], destination: { ip: string; port: number }) => Decision;
}

/** The two levels the relays log at, behind a lazily created child logger. */
interface ConnLog {
  warn(obj: Record<string, unknown>, msg: string): void;
  debug(obj: Record<string, unknown>, msg: string): void;
}

/** An open relay: what it is and how to read its byte counts (src -> dst, dst -> src) so far. */
interface Relay {
  info: ConnectionInfo;
  bytes: () => { sent: number; recv: number };
  /** A plain TCP relay's two sockets (up once connected), which a take-over may hand to the successor. */
  plain?: { down: net.Socket; up?: net.Socket; stats: DirectionStats };
}

/**
 * Whether a relay handed over by a predecessor may be taken: the pod must be listening here, and an inbound relay must
 * carry what policy decided on (without it the successor could neither check it now nor on a later change). Pure.
 */
export function relayAdoptable(meta: Pick<RelayMeta, 'direction' | 'policy'>, listening: boolean): boolean {
  return listening && (meta.direction !== 'inbound' || meta.policy !== undefined);
}

/** A plain TCP relay a take-over may hand to the successor (see Enroller.movableRelays, handover/relay-transfer.ts). */
export interface MovableRelay {
  /** Stops relaying here and writes out what was read (see pauseRelay); undefined when it cannot move. */
  pause(): PausedRelay | undefined;
  /** What the successor needs to carry it on (call once paused and flushed: the byte counts are final then). */
  describe(): Omit<RelayMeta, 'pod'>;
  /** The successor has it: forget it here and close this agent's descriptors (close only: the connection lives on). */
  handedOver(): void;
}

export class PodForwarder {
  readonly stats: ForwarderStats = { outbound: emptyStats(), inbound: emptyStats(), active: 0, movedOut: 0, movedIn: 0 };
  /** The listeners start() opens (podListenerKinds): IPv4's, and IPv6's when captured and the pod has an IPv6 address. */
  private readonly planned: readonly ListenerKind[];
  private servers = new Map<ListenerKind, net.Server>();
  /** The outbound listeners (15001), whose connections the data path accepts. */
  private outListeners = new Map<ListenerKind, OutboundListener>();
  /** stop() ran and start() has not run since: a connection accepted before it and handed over after it is reset. */
  private stopped = false;
  private hboneListeners = new Map<ListenerKind, HboneListener>();
  /** Open relays by their handle: a plain TCP socket, or an HBONE stream's stand-in (both can be destroyed). */
  private open = new Map<Closable, Relay>();
  /** Open inbound connections and what policy saw of them, re-evaluated when policies change. */
  private inbound = new Map<Closable, { source: AuthzConnection['source']; destination: { ip: string; port: number }; close: (reason: string) => void }>();
  private nextConnId = 1;

  /** The families whose reply routing the backend installs in this pod (the same decision, made once per pod). */
  private readonly preservedFamilies: ReturnType<typeof replyFamilies>;

  /** The pod's own address of each family (the first): an HBONE tunnel's source for a destination of that family. */
  private readonly ownIp: Partial<Record<IpFamily, string>>;

  constructor(private readonly self: PodSelf, private readonly mesh: MeshContext, private readonly log: Logger) {
    this.preservedFamilies = replyFamilies(mesh.preserveSource, mesh.captureFamilies, self.ips);
    this.planned = podListenerKinds(self.ips, mesh.captureFamilies);
    this.ownIp = { ipv4: addressesOf(self.ips, 'ipv4')[0], ipv6: addressesOf(self.ips, 'ipv6')[0] };
  }

  /**
   * Opens the listeners inside the pod (three per family it has and the backend captures: see podListenerKinds): the
   * sockets in `handed` (a predecessor's, handed over in a take-over, checked by the caller) where given, else new ones,
   * SO_REUSEPORT only with `reusePort` (beside an older agent's). Owns the handed fds from the call on (one of a kind not
   * planned here is closed). Throws (after closing any it opened, and every handed fd) if one cannot be had.
   */
  async start(handed: HandedListeners = {}, reusePort = false): Promise<void> {
    this.stopped = false; // a repair restarts a stopped forwarder (stop() then start())
    const ns = this.self.ns;
    const pending = { ...handed };
    const socket = (kind: ListenerKind): { address: string; fd?: number; reusePort?: boolean } => {
      const fd = pending[kind];
      delete pending[kind]; // from here on listenIn's (it closes it when it fails)
      const { address } = LISTENER_ADDRESSES[kind];
      return fd !== undefined ? { address, fd } : { address, reusePort };
    };
    try {
      for (const kind of this.planned) {
        const { role, port } = LISTENER_ADDRESSES[kind];
        if (role === 'outbound') {
          // Transparent: under the ebpf backend the accepted socket answers from the original destination's address.
          // The data path accepts (no Node socket per connection) and hands over each connection's fd, unread.
          const { family } = LISTENER_ADDRESSES[kind];
          const s = socket(kind);
          const fd = s.fd ?? listenFdIn(ns, { address: s.address, port, transparent: true, reusePort: s.reusePort });
          try {
            this.outListeners.set(kind, this.mesh.hbone.listenOutbound(fd, family, (c) => this.outbound(c, family), this.listenerTrouble(kind)));
          } catch (err) {
            close(fd);
            throw err;
          }
        } else if (role === 'inbound') {
          this.servers.set(kind, await listenIn(ns, { port, ...socket(kind) }, (s) => this.plaintextInbound(s, LISTENER_ADDRESSES[kind].family)));
        } else {
          this.hboneListeners.set(kind, await this.mesh.hbone.listen(
            ns, this.self.identity, this.mesh.trustDomain, (r) => this.hboneInbound(r), () => this.stats.inbound.refused++, socket(kind),
          ));
        }
      }
    } catch (err) {
      closeAll(Object.values(pending));
      await this.stop();
      throw err;
    }
    closeAll(Object.values(pending)); // handed for a family this agent does not capture: never used
  }

  /** The listening sockets' fds by kind (those open): what a take-over hands to the successor (this agent keeps its own). */
  listenerFds(): { kind: ListenerKind; fd: number }[] {
    const fds = this.planned.map((kind) => {
      const server = this.servers.get(kind);
      return { kind, fd: server ? serverFd(server) : (this.outListeners.get(kind) ?? this.hboneListeners.get(kind))?.fd };
    });
    return fds.filter((l): l is { kind: ListenerKind; fd: number } => l.fd !== undefined);
  }

  /** True while all planned listeners are open. */
  get listening(): boolean {
    return this.planned.length > 0 && this.planned.every((k) => (this.servers.get(k) ?? this.outListeners.get(k) ?? this.hboneListeners.get(k))?.listening ?? false);
  }

  /** Open relays (plain TCP sockets and HBONE streams): what a take-over's drain waits for. */
  get openRelays(): number {
    return this.open.size;
  }

  /**
   * A take-over's first step of the drain: closes this agent's copies of the listening sockets (the successor holds the
   * same sockets, so their queued connections are its to accept); open relays go on until they end or stop() cuts them.
   */
  async stopAccepting(): Promise<void> {
    // Not awaited: a net.Server's close callback waits for its open connections, which the drain lets run.
    for (const s of this.servers.values()) s.close();
    this.servers.clear();
    for (const l of this.outListeners.values()) l.close(true); // connections already accepted are still relayed
    this.outListeners.clear();
    await Promise.all([...this.hboneListeners.values()].map((l) => l.stopAccepting()));
  }

  /** Closes the listeners, this pod's pooled HBONE connections and every open relay. Idempotent. */
  async stop(): Promise<void> {
    this.stopped = true;
    const servers = [...this.servers.values()];
    this.servers.clear();
    for (const l of this.outListeners.values()) l.close(false);
    this.outListeners.clear();
    const hboneListeners = [...this.hboneListeners.values()];
    this.hboneListeners.clear();
    for (const ip of this.self.ips) this.mesh.hbone.closeFrom(ip);
    for (const s of this.open.keys()) s.destroy();
    await Promise.all([
      ...servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))),
      ...hboneListeners.map((l) => l.close()),
    ]);
  }

  /**
   * What an outbound listener's trouble is logged as: one that could not be made at once (an error: the pod is not
   * listening on 15001, so its readiness fails); accept() failing (it rests a second each time) at most every 10 s.
   */
  private listenerTrouble(kind: ListenerKind): (error: string, gone: boolean) => void {
    let warnedAt = 0;
    let since = 0;
    return (error, gone) => {
      if (gone) return this.log.error({ listener: kind, error }, 'outbound listener could not be made');
      since++;
      if (Date.now() - warnedAt < LISTENER_WARN_EVERY_MS) return;
      this.log.warn({ listener: kind, error, times: since }, 'outbound listener could not accept');
      warnedAt = Date.now();
      since = 0;
    };
  }

  /** A connection the data path accepted on 15001 (its fd ours from here on, unread): refused, passed through or tunnelled. */
  private outbound(c: AcceptedConnection, family: IpFamily): void {
    if (this.stopped) return resetFd(c.fd);
    const stats = this.stats.outbound;
    const src = { ip: normalizeIp(c.src.address), port: c.src.port };
    if (!c.dst.address) {
      const info = this.info('outbound', { addr: formatHostPort(src.ip, src.port) }, { addr: '' }, false);
      return this.refuse(c.fd, stats, info, `no original destination (${family} listener)`);
    }
    const dst = { address: normalizeIp(c.dst.address), port: c.dst.port };
    const route = decideOutbound(dst, this.mesh);
    const me = { ...this.me(), addr: formatHostPort(src.ip, src.port) };
    const dstAddr = formatHostPort(dst.address, dst.port);
    const viaService = route.service ? { service: route.service, serviceAddr: dstAddr } : {};
    if (route.kind === 'refuse') {
      const info = { ...this.info('outbound', me, { addr: dstAddr }, false), ...viaService };
      if (route.responseFlags !== RESPONSE_FLAGS.none) this.countedAtOpen(info, route.responseFlags);
      return this.refuse(c.fd, stats, info, route.reason, route.responseFlags);
    }
    const targetAddr = connectAuthority(route.target.address, route.target.port);
    if (route.kind === 'passthrough') {
      const info = { ...this.info('outbound', me, { ...this.peerOf(route.target.address), addr: targetAddr }, false), ...viaService };
      // Paused as a net.Server's pauseOnConnect does it (Node's `pauseOnCreate`, not in its types): nothing is read before
      // the upstream is connected and the relay starts.
      const down = new net.Socket({ fd: c.fd, readable: true, writable: true, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
      down.on('error', () => undefined); // an app's reset must never become an uncaught error (splice tears down on close)
      return this.splice(down, stats, this.connLog(info), dialFrom(this.self.ns, { host: route.target.address, port: route.target.port, mark: AGENT_MARK }), info);
    }
    stats.hbone++;
    // The pod's own address of the destination's family names the tunnel's source (the pool key; closeFrom on removal).
    const dstFamily = ipFamily(route.target.address);
    const srcIp = (dstFamily && this.ownIp[dstFamily]) ?? src.ip;
    const target = { ns: this.self.ns, srcIp, srcIdentity: this.self.identity, dstIp: route.target.address, dstIdentity: route.peer.identity };
    const headers = connectHeaders(src, this.self.baggage, route.service?.hostname);
    const peer = { workload: route.peer.name, namespace: route.peer.namespace, principal: route.peer.identity, addr: targetAddr };
    const info = { ...this.info('outbound', me, peer, true), tunnelAddr: formatHostPort(route.target.address, INBOUND_HBONE_PORT), ...viaService };
    this.outboundHbone(stats, info, (cancelled) => this.mesh.hbone.connect(target, c.fd, targetAddr, headers, cancelled));
  }

  /**
   * HBONE outbound: the same bookkeeping as splice() (open relays, stats, metrics, access log), but the bytes never
   * enter Node. The data path owns the downstream fd from `open` on (reset if no HBONE session can be had); one
   * destroyed before its stream exists (a policy change, the pod stopping) is reset instead of tunnelled.
   */
  private outboundHbone(stats: DirectionStats, info: ConnectionInfo, open: (cancelled: () => boolean) => Promise<HboneOutbound>): void {
    let stream: HboneStream | undefined;
    let destroyed = false;
    const handle: Closable = {
      destroy: () => {
        destroyed = true;
        stream?.close();
      },
    };
    const done = this.hboneRelay(handle, stats, info, () => {
      const b = stream?.bytes() ?? { in: 0, out: 0 };
      return { sent: b.in, recv: b.out };
    });
    open(() => destroyed).then(
      (s) => {
        stream = s;
        if (destroyed) s.close();
        s.ready.catch((err: Error) => done.failed(err));
        void s.closed.then((end) => done.finish({ sent: end.bytesIn, recv: end.bytesOut }, end));
      },
      (err: Error) => {
        done.failed(err); // the data path has reset the app's connection
        done.finish({ sent: 0, recv: 0 });
      },
    );
  }

  /**
   * A verified CONNECT on 15008: policy first, then connect to the app, and answer 200 only once the app accepted the
   * connection. A stream already reset is answered without a dial, and one reset while its dial is in flight drops the dialed socket.
   */
  private hboneInbound(r: HboneInboundRequest): void {
    const stats = this.stats.inbound;
    if (r.stream.isClosed) {
      r.answer(503);
      return;
    }
    const d = decideInbound(r.method, r.authority, this.self.ips);
    if ('status' in d) {
      stats.refused++;
      this.log.warn({ peerIdentity: r.peerIdentity, status: d.status, reason: d.reason }, 'hbone request refused');
      r.answer(d.status);
      return;
    }
    stats.hbone++;
    const destination = { ip: d.upstream.host, port: d.upstream.port };
    const { info, source, denied } = this.openHboneInbound({ address: r.peerAddress, port: r.peerPort, identity: r.peerIdentity, local: r.localAddress }, destination, stats);
    if (denied) {
      r.answer(401);
      return;
    }
    const handle: Closable = { destroy: () => r.stream.close() };
    // Here the app side is the upstream socket: bytes written to it went peer -> app ("sent").
    const done = this.hboneRelay(handle, stats, info, () => {
      const b = r.stream.bytes();
      return { sent: b.out, recv: b.in };
    });
    this.inbound.set(handle, { source, destination, close: (reason) => done.deny(reason) });
    void r.stream.closed.then((end) => {
      this.inbound.delete(handle);
      if (end.connectFailed) done.failed(new Error(end.error ?? 'connect failed'));
      done.finish({ sent: end.bytesOut, recv: end.bytesIn }, end);
    });
    // The data path finishes the connect and answers (200 once connected, 503 if it fails or takes over
    // DIAL_TIMEOUT_MS); a stream reset or closed meanwhile closes the socket there. No Node socket on this path.
    const from = this.sourceFor(source.ip, d.upstream.host);
    let fd: number;
    try {
      fd = startDial(this.self.ns, { host: d.upstream.host, port: d.upstream.port, mark: this.mesh.appMark, ...(from ? { source: { address: from } } : {}) });
    } catch (err) {
      done.failed(err instanceof Error ? err : new Error(String(err)));
      r.answer(503);
      return;
    }
    r.answerConnect(fd, DIAL_TIMEOUT_MS);
  }

  /** Registers an open relay (for `conns` and the counters) and counts its opening in the metrics; returns its labels. */
  private register(handle: Closable, stats: DirectionStats, info: ConnectionInfo, bytes: Relay['bytes'], plain?: Relay['plain']): TcpLabels | undefined {
    this.open.set(handle, { info, bytes, ...(plain ? { plain } : {}) });
    this.stats.active++;
    stats.opened++;
    const labels = this.mesh.connections ? this.labels(info) : undefined;
    if (labels) this.mesh.connections?.opened(labels);
    return labels;
  }

  /** Bookkeeping of an HBONE relay (bytes carried by the data path) from open to close, as splice() does it for TCP. */
  private hboneRelay(handle: Closable, stats: DirectionStats, info: ConnectionInfo, bytes: () => { sent: number; recv: number }): {
    failed: (err: Error) => void;
    deny: (reason: string) => void;
    finish: (b: { sent: number; recv: number }, end?: HboneStreamEnd) => void;
  } {
    const obs = this.mesh.connections;
    const labels = this.register(handle, stats, info, bytes);
    let responseFlags: string = RESPONSE_FLAGS.none;
    let error: string | undefined;
    const clog = this.connLog(info);
    return {
      failed: (err) => {
        if (error !== undefined) return;
        responseFlags = err instanceof HboneStatusError && err.status === 401 ? RESPONSE_FLAGS.denied : RESPONSE_FLAGS.upstreamFailure;
        error = `upstream connect failed: ${err.message}`;
        stats.refused++;
        clog.debug({ error: err.message }, 'upstream connect failed');
      },
      deny: (reason) => {
        responseFlags = RESPONSE_FLAGS.denied;
        error = `closed after a policy change: ${reason}`;
        handle.destroy();
      },
      finish: ({ sent, recv }) => {
        if (!this.open.delete(handle)) return;
        this.stats.active--;
        stats.closed++;
        stats.bytesFromDownstream += sent;
        stats.bytesToDownstream += recv;
        if (labels) obs?.closed({ ...labels, response_flags: responseFlags }, recv, sent);
        this.access(info, { bytesSent: sent, bytesRecv: recv, durationMs: Date.now() - info.startedAt, responseFlags, ...(error ? { error } : {}) });
      },
    };
  }

  private plaintextInbound(down: net.Socket, family: IpFamily): void {
    const stats = this.stats.inbound;
    down.on('error', () => undefined);
    const dst = this.originalDst(down, 'inbound', family);
    if (!dst) return;
    const source = { ip: normalizeIp(down.remoteAddress ?? '') };
    const from = { ...this.peerOf(source.ip), addr: formatHostPort(source.ip, down.remotePort ?? 0) };
    const info = { ...this.info('inbound', from, { ...this.me(), addr: formatHostPort(dst.address, dst.port) }, false), ...this.inboundService({ ip: dst.address, port: dst.port }) };
    const clog = this.connLog(info);
    const verdict = decidePlaintextInbound(dst, this.self.ips, this.self.mtlsMode(dst.port));
    if (!verdict.ok) {
      this.deniedAtOpen(info);
      return this.refuse(down, stats, info, verdict.reason, RESPONSE_FLAGS.denied);
    }
    const destination = { ip: dst.address, port: dst.port };
    const denial = this.admit(source, destination, stats, clog);
    if (denial) {
      this.deniedAtOpen(info);
      return this.refuse(down, stats, info, denial, RESPONSE_FLAGS.denied);
    }
    this.track(down, source, destination);
    // The client's own port is avoided: its REDIRECTed connection holds the conntrack tuple client:port -> pod:port.
    const fromIp = this.sourceFor(source.ip, dst.address);
    const fromSrc = fromIp ? { source: { address: fromIp, ...(down.remotePort !== undefined ? { avoidPort: down.remotePort } : {}) } } : {};
    this.splice(down, stats, clog, dialFrom(this.self.ns, { host: dst.address, port: dst.port, mark: this.mesh.appMark, ...fromSrc }), info);
  }

  /**
   * The opening of a verified HBONE stream: its connection record and the policy decision. A denied stream is counted,
   * metered and access-logged here; the caller only answers 401.
   */
  private openHboneInbound(
    peer: { address: string; port: number; identity: string; local: string },
    destination: { ip: string; port: number },
    stats: DirectionStats,
  ): { info: ConnectionInfo; source: AuthzConnection['source']; denied: boolean } {
    const source = { ip: normalizeIp(peer.address), principal: peer.identity };
    const from = { ...this.peerOf(source.ip), principal: peer.identity, addr: formatHostPort(source.ip, peer.port) };
    const info = { ...this.info('inbound', from, { ...this.me(), addr: formatHostPort(destination.ip, destination.port) }, true), tunnelAddr: peer.local, ...this.inboundService(destination) };
    const clog = this.connLog(info);
    const denial = this.admit(source, destination, stats, clog);
    if (denial) {
      this.deniedAtOpen(info);
      stats.refused++;
      this.access(info, { bytesSent: 0, bytesRecv: 0, durationMs: Date.now() - info.startedAt, responseFlags: RESPONSE_FLAGS.denied, error: denial }, true);
    }
    return { info, source, denied: denial !== undefined };
  }

  /**
   * Where an inbound upstream socket to `upstream` binds: the client's address when preserving it, else undefined (the
   * pod's own). Only in a family whose reply routing the backend installed in this pod (replyFamilies: IPv6 only with
   * --capture-ipv6 and a pod IPv6 address), never otherwise: the app's replies would leave the pod in clear. Never
   * across families (an IPv4 peer tunnelling to the app's IPv6 address): the kernel picks the pod's own address then.
   */
  private sourceFor(clientIp: string, upstream: string): string | undefined {
    if (ipFamily(clientIp) !== ipFamily(upstream)) return undefined;
    return upstreamSource(clientIp, this.preservedFamilies);
  }

  /** This pod, as a metrics peer. */
  private me(): Peer {
    return { workload: this.self.name, namespace: this.self.namespace, principal: this.self.identity };
  }

  /** A peer known only by its address: the directory names it when it is a mesh workload (no principal: unverified). */
  private peerOf(ip: string): Peer {
    const w = this.mesh.lookup(ip);
    return w ? { workload: w.name, namespace: w.namespace } : {};
  }

  private info(direction: Direction, src: Endpoint, dst: Endpoint, mtls: boolean): ConnectionInfo {
    const pod = `${this.self.namespace ?? ''}/${this.self.name ?? ''}`;
    return { id: this.nextConnId++, direction, pod, src, dst, mtls, startedAt: Date.now() };
  }

  /** The Service an inbound connection's destination is an endpoint of (ztunnel guesses the same way, by port). */
  private inboundService(destination: { ip: string; port: number }): { service?: ServiceRef } {
    const service = this.mesh.serviceOfEndpoint?.(destination.ip, destination.port);
    return service ? { service } : {};
  }

  private labels(info: ConnectionInfo): TcpLabels {
    return connectionLabels({ reporter: info.direction === 'outbound' ? 'source' : 'destination', source: info.src, destination: info.dst, service: info.service, mtls: info.mtls });
  }

  /** A connection refused before it was relayed (by policy, or for want of an endpoint): one open and one close with that response flag, no bytes. */
  private countedAtOpen(info: ConnectionInfo, responseFlags: string): void {
    const obs = this.mesh.connections;
    if (!obs) return;
    const labels = { ...this.labels(info), response_flags: responseFlags };
    obs.opened(labels);
    obs.closed(labels, 0, 0);
  }

  private deniedAtOpen(info: ConnectionInfo): void {
    this.countedAtOpen(info, RESPONSE_FLAGS.denied);
  }

  /** Applies AuthorizationPolicy to a new inbound connection: undefined when admitted, else why not. Logs dry-run would-denials. */
  private admit(source: AuthzConnection['source'], destination: { ip: string; port: number }, stats: DirectionStats, clog: ConnLog): string | undefined {
    const d = this.self.authorize(source, destination);
    if (d.dryRunAllowed === false && d.allowed) clog.warn({ dryRun: d.dryRun, reason: d.reason }, 'dry-run policy would deny this connection');
    if (d.allowed) return undefined;
    stats.denied++;
    return d.reason;
  }

  /** Writes the connection's access log line (see accessLogLine); successful ones only when the access log is on. */
  private access(info: ConnectionInfo, outcome: ConnectionOutcome, refused = false): void {
    const line = accessLogLine(info, outcome, refused);
    const sink = this.mesh.accessLog ?? { log: this.log, complete: true };
    if (line.level === 'info' && !sink.complete) return;
    sink.log[line.level](line.fields, line.msg);
  }

  /**
   * Plain TCP relays (passthrough outbound, plaintext inbound) whose upstream is connected: what a take-over hands to
   * the successor. HBONE relays are not among them: they drain here.
   */
  movableRelays(): MovableRelay[] {
    const out: MovableRelay[] = [];
    for (const [handle, r] of this.open) {
      const p = r.plain;
      const up = p?.up;
      if (!p || !up) continue;
      out.push({
        pause: () => (this.open.get(handle) === r ? pauseRelay(p.down, up) : undefined),
        describe: () => {
          const b = r.bytes();
          const policy = this.inbound.get(handle);
          const i = r.info;
          return {
            direction: i.direction, src: i.src, dst: i.dst, startedAt: i.startedAt, bytesSent: b.sent, bytesRecv: b.recv,
            ...(i.service ? { service: i.service } : {}), ...(i.serviceAddr ? { serviceAddr: i.serviceAddr } : {}),
            ...(policy ? { policy: { source: policy.source, destination: policy.destination } } : {}),
          };
        },
        handedOver: () => {
          if (!this.open.delete(handle)) return;
          this.inbound.delete(handle);
          this.stats.active--;
          this.stats.movedOut++;
          // destroy() closes this process's descriptors only (no shutdown, no reset): the successor's copies carry on.
          p.down.destroy();
          up.destroy();
        },
      });
    }
    return out;
  }

  /**
   * Carries on a plain TCP relay a predecessor handed over: its sockets (received descriptors), its connection record
   * and byte counts so far, and for plaintext inbound the policy decision to re-evaluate on policy changes (not a new one).
   */
  adoptRelay(meta: Omit<RelayMeta, 'pod'>, downFd: number, upFd: number): void {
    const wrap = (fd: number): net.Socket => new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
    // Owns both descriptors from here: any failure closes what is not wrapped yet (close only, never shutdown).
    let down: net.Socket;
    try {
      down = wrap(downFd);
    } catch (err) {
      closeAll([downFd, upFd]);
      throw err;
    }
    let up: net.Socket;
    try {
      up = wrap(upFd);
    } catch (err) {
      down.destroy();
      closeAll([upFd]);
      throw err;
    }
    down.on('error', () => undefined);
    const stats = this.stats[meta.direction];
    const info: ConnectionInfo = {
      ...this.info(meta.direction, meta.src, meta.dst, false), startedAt: meta.startedAt,
      ...(meta.service ? { service: meta.service } : {}), ...(meta.serviceAddr ? { serviceAddr: meta.serviceAddr } : {}),
    };
    if (meta.policy) this.track(down, meta.policy.source, meta.policy.destination);
    this.stats.movedIn++;
    this.splice(down, stats, this.connLog(info), Promise.resolve(up), info, { sent: meta.bytesSent, recv: meta.bytesRecv });
    // Authorised once on arrival against this agent's policies (the predecessor's view may be older): closed if denied.
    const tracked = this.inbound.get(down);
    if (tracked) this.recheck(tracked);
  }

  /** True when this forwarder can carry on a relay a predecessor offers (see relayAdoptable). */
  canAdoptRelay(meta: Pick<RelayMeta, 'direction' | 'policy'>): boolean {
    return relayAdoptable(meta, this.listening);
  }

  /** Open relays with their byte counts so far, for `ambient-node conns`. */
  connections(now = Date.now()): ConnectionSnapshot[] {
    return [...this.open.values()].map((r) => {
      const b = r.bytes();
      return { ...r.info, bytesSent: b.sent, bytesRecv: b.recv, durationMs: now - r.info.startedAt };
    });
  }

  /** Remembers an admitted inbound connection; closing it with an error makes splice() tear down its upstream too. */
  private track(conn: net.Socket, source: AuthzConnection['source'], destination: { ip: string; port: number }): void {
    const close = (reason: string): void => void conn.destroy(new AmbientError('AMB_ERR_DENIED', `closed after a policy change: ${reason}`));
    this.inbound.set(conn, { source, destination, close });
    conn.once('close', () => this.inbound.delete(conn));
  }

  /** Re-evaluates every open inbound connection after a policy change and closes those now denied. Returns how many. */
  reevaluate(): number {
    let closed = 0;
    for (const [, c] of this.inbound) if (!this.recheck(c)) closed++;
    return closed;
  }

  /** Authorises one open inbound connection again; closes it (denied) and returns false when policy now denies it. */
  private recheck(c: { source: AuthzConnection['source']; destination: { ip: string; port: number }; close: (reason: string) => void }): boolean {
    const d = this.self.authorize(c.source, c.destination);
    if (d.allowed) return true;
    this.stats.inbound.denied++;
    this.log.warn({ policy: d.policy, reason: d.reason, principal: c.source.principal, dst: formatHostPort(c.destination.ip, c.destination.port) }, 'open connection closed: now denied by authorization policy');
    c.close(d.reason);
    return false;
  }

  /**
   * A per-connection logger made only when something is logged: pino serialises a child's fields when it is created,
   * which cost ~20 µs per connection on the hot path (profiled) for lines that are usually below the level.
   */
  private connLog(info: ConnectionInfo): ConnLog {
    let child: Logger | undefined;
    const fields = { connId: info.id, direction: info.direction, src: info.src.addr, dst: info.dst.addr, ...(info.mtls ? { peerIdentity: info.direction === 'outbound' ? info.dst.principal : info.src.principal } : {}) };
    const get = (): Logger => (child ??= this.log.child(fields));
    return {
      warn: (obj, msg) => get().warn(obj, msg),
      debug: (obj, msg) => {
        if (this.log.isLevelEnabled('debug')) get().debug(obj, msg);
      },
    };
  }

  private originalDst(down: net.Socket, direction: Direction, family: IpFamily): { address: string; port: number } | undefined {
    try {
      return originalDst(down, family);
    } catch (err) {
      const addr = (ip: string | undefined, port: number | undefined): string => formatHostPort(normalizeIp(ip ?? ''), port ?? 0);
      const info = this.info(direction, { addr: addr(down.remoteAddress, down.remotePort) }, { addr: addr(down.localAddress, down.localPort) }, false);
      this.refuse(down, this.stats[direction], info, `no original destination: ${(err as Error).message}`);
      return undefined;
    }
  }

  /** Resets a connection that will not be relayed, with a `connection failed` access log line. */
  private refuse(down: net.Socket | number, stats: DirectionStats, info: ConnectionInfo, reason: string, responseFlags: string = RESPONSE_FLAGS.none): void {
    stats.refused++;
    this.access(info, { bytesSent: 0, bytesRecv: 0, durationMs: Date.now() - info.startedAt, responseFlags, error: reason }, true);
    if (typeof down === 'number') resetFd(down);
    else down.resetAndDestroy();
  }

  /**
   * Relays plain TCP both ways between `down` and the upstream once it is connected (passthrough and plaintext inbound).
   * Half-closes propagate through pipe(); only an error on one side tears down the other, so no buffered byte is lost. A
   * failed upstream resets `down`. Bytes are counted on `down`: src -> dst is what it read.
   */
  private splice(down: net.Socket, stats: DirectionStats, clog: ConnLog, upstream: Promise<net.Socket>, info: ConnectionInfo, before = { sent: 0, recv: 0 }): void {
    let up: net.Socket | undefined;
    // `carried`: this agent's bytes (stats, metrics); `bytes`: since the connection opened, a predecessor's included (conns, access log).
    const carried = (): { sent: number; recv: number } => ({ sent: down.bytesRead ?? 0, recv: down.bytesWritten ?? 0 });
    const bytes = (): { sent: number; recv: number } => {
      const c = carried();
      return { sent: before.sent + c.sent, recv: before.recv + c.recv };
    };
    const obs = this.mesh.connections;
    const plain: NonNullable<Relay['plain']> = { down, stats };
    const labels = this.register(down, stats, info, bytes, plain);
    let responseFlags: string = RESPONSE_FLAGS.none;
    let error: string | undefined;
    down.pause();
    const finish = (): void => {
      if (!this.open.delete(down)) return;
      this.stats.active--;
      stats.closed++;
      const here = carried();
      const { sent, recv } = bytes();
      stats.bytesFromDownstream += here.sent;
      stats.bytesToDownstream += here.recv;
      const errored = down.errored as { code?: string; message?: string } | null;
      if (errored?.code === 'AMB_ERR_DENIED') {
        responseFlags = RESPONSE_FLAGS.denied;
        error = errored.message;
      }
      if (labels) obs?.closed({ ...labels, response_flags: responseFlags }, here.recv, here.sent);
      this.access(info, { bytesSent: sent, bytesRecv: recv, durationMs: Date.now() - info.startedAt, responseFlags, ...(error ? { error } : {}) });
    };
    down.once('close', () => {
      if (!up || down.errored) up?.destroy();
      finish();
    });
    upstream.then(
      (u) => {
        up = u;
        plain.up = u;
        if (down.destroyed) {
          u.destroy();
          return;
        }
        u.on('error', () => undefined);
        u.once('close', () => {
          if (u.errored) down.destroy();
        });
        u.setNoDelay(true);
        down.setNoDelay(true);
        down.pipe(u);
        u.pipe(down);
        down.resume();
      },
      (err: Error) => {
        responseFlags = RESPONSE_FLAGS.upstreamFailure;
        error = `upstream connect failed: ${err.message}`;
        stats.refused++;
        clog.debug({ error: err.message }, 'upstream connect failed');
        down.resetAndDestroy();
      },
    );
  }
}

/** What the forwarder can close: a plain TCP socket or an HBONE stream's stand-in. */
interface Closable {
  destroy(): void;
}

