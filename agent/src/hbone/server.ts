// The inbound HBONE listener of one pod (15008): terminates mutual TLS, checks the peer's SPIFFE trust domain, and
// serves CONNECT streams to the pod's own IP only (never an open proxy); 200 is sent only after the upstream connect.
// Also how long an accepted stream's upstream socket may outlive it (releaseUpstreamWithStream).
import http2 from 'node:http2';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import type { IdentityProvider, TlsMaterial } from '../identity/provider.js';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { listenFdIn } from '../platform/sockets.js';
import { AGENT_PORTS, INBOUND_HBONE_PORT } from '../redirect/constants.js';
import { keepalive } from './keepalive.js';
import { CONNECTION_WINDOW, DEFAULT_KEEPALIVE, SERVER_SETTINGS, type ServerLimits, serverLimits } from './settings.js';
import { baseTlsOptions, checkClientSpiffe, parseAuthority } from './tls.js';

/** What the server decided for one CONNECT request. Pure. */
export type InboundDecision = { upstream: { host: string; port: number } } | { status: 400 | 503; reason: string };

export function decideInbound(method: string | undefined, authority: string | undefined, podIps: readonly string[]): InboundDecision {
  if (method !== 'CONNECT') return { status: 400, reason: `method ${method ?? '(none)'} is not CONNECT` };
  const target = parseAuthority(authority);
  if (!target) return { status: 400, reason: `bad :authority ${JSON.stringify(authority)}` };
  if (!podIps.includes(target.host)) return { status: 400, reason: `:authority ${target.host} is not this pod (${podIps.join(', ')})` };
  if (AGENT_PORTS.includes(target.port)) return { status: 503, reason: `port ${target.port} is reserved for the agent` };
  return { upstream: target };
}

/** One accepted CONNECT stream, handed to the forwarder with the verified peer identity. */
export interface InboundStream {
  stream: http2.ServerHttp2Stream;
  peerIdentity: string;
  peerAddress: string;
  peerPort: number;
  /** The tunnel's local end (`podIP:15008`). */
  localAddress: string;
  upstream: { host: string; port: number };
  headers: http2.IncomingHttpHeaders;
}

/**
 * TLS handshakes in progress on every 15008 listener of this agent (one per node), by the client's address:port, and
 * the refusals beyond the cap (ServerLimits.maxHandshaking); the native data path keeps the same count in NativeHbone.
 */
const handshaking = new Map<string, Socket>();
export const nodeServerStats = { handshakesRefused: 0 };
let refusedWarnAt = 0;
let refusedSinceWarn = 0;

export class HboneServer {
  private server: http2.Http2SecureServer | undefined;
  private sessions = new Set<http2.ServerHttp2Session>();
  /** Set while started: a stopped server (its pod left) must not stay subscribed to renewals. */
  private unsubscribe: (() => void) | undefined;
  private readonly limits: ServerLimits = serverLimits();

  constructor(
    private readonly ns: Netns,
    private readonly podIps: readonly string[],
    private readonly identity: string,
    private readonly identities: IdentityProvider,
    private readonly trustDomain: string,
    private readonly log: Logger,
    private readonly onStream: (s: InboundStream) => void,
    private readonly onRefused: (reason: string) => void,
  ) {}

  async start(): Promise<void> {
    const material = await this.identities.material(this.identity);
    const server = http2.createSecureServer({
      ...baseTlsOptions(material),
      requestCert: true,
      rejectUnauthorized: true,
      allowHTTP1: false,
      settings: SERVER_SETTINGS,
      maxSessionMemory: 64,
      // The same deadline as the native data path's (settings.ts); 0 leaves Node's own default, 120 s.
      handshakeTimeout: this.limits.handshakeTimeoutMs || 0,
    });
    server.on('connection', (raw: Socket) => this.onConnection(raw));
    server.on('secureConnection', (sock: TLSSocket) => handshaking.delete(`${sock.remoteAddress}|${sock.remotePort}`));
    server.on('session', (session) => this.onSession(session));
    server.on('stream', (stream, headers) => this.onRequest(stream, headers));
    server.on('tlsClientError', (err: Error, sock: TLSSocket) => {
      // A chain that does not verify ends here with a bare "socket hang up": the real cause is authorizationError.
      const cause = String(sock.authorizationError ?? err.message);
      this.onRefused(`tls: ${cause}`);
      this.log.warn({ error: cause, peer: sock.remoteAddress }, 'hbone handshake refused');
    });
    const fd = listenFdIn(this.ns, { address: '0.0.0.0', port: INBOUND_HBONE_PORT });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.unsubscribe = this.identities.onRenewed((identity) => void this.refresh(identity));
  }

  get listening(): boolean {
    return this.server?.listening ?? false;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    this.unsubscribe?.();
    this.unsubscribe = undefined;
    for (const session of this.sessions) session.destroy();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  }

  /** New handshakes use the renewed certificate; established connections carry on with theirs. */
  private async refresh(identity: string): Promise<void> {
    if (identity !== this.identity || !this.server) return;
    try {
      const m: TlsMaterial = await this.identities.material(identity);
      this.server.setSecureContext(baseTlsOptions(m));
      this.log.debug({ serial: m.serial }, 'hbone server certificate rotated');
    } catch (err) {
      this.log.warn({ error: (err as Error).message }, 'hbone server keeps its previous certificate');
    }
  }

  /** Counts a connection until its TLS handshake ends; beyond the cap it is reset at once (tlsClientError counts it). */
  private onConnection(raw: Socket): void {
    const max = this.limits.maxHandshaking;
    if (max > 0 && handshaking.size >= max) {
      nodeServerStats.handshakesRefused++;
      refusedSinceWarn++;
      const now = Date.now();
      if (now - refusedWarnAt >= 1000) {
        this.log.warn({ peer: raw.remoteAddress, refused: refusedSinceWarn, total: nodeServerStats.handshakesRefused, limit: max },
          'hbone connections refused: too many handshakes in progress');
        refusedWarnAt = now;
        refusedSinceWarn = 0;
      }
      raw.resetAndDestroy();
      return;
    }
    const key = `${raw.remoteAddress}|${raw.remotePort}`;
    handshaking.set(key, raw);
    raw.once('close', () => {
      if (handshaking.get(key) === raw) handshaking.delete(key);
    });
  }

  private onSession(session: http2.ServerHttp2Session): void {
    const sock = session.socket as TLSSocket;
    const peerCert = sock.getPeerCertificate();
    const verdict = checkClientSpiffe(this.trustDomain, peerCert);
    if (verdict instanceof Error) {
      this.onRefused(verdict.message);
      this.log.warn({ peer: sock.remoteAddress, reason: verdict.message }, 'hbone client refused');
      // INADEQUATE_SECURITY, not NO_ERROR: a GOAWAY without an error would invite the client to retry elsewhere.
      session.goaway(http2.constants.NGHTTP2_INADEQUATE_SECURITY);
      session.destroy();
      return;
    }
    peerIdentities.set(session, verdict);
    // The HTTP/2 half of the handshake: the client's SETTINGS must follow within the same deadline.
    const deadline = this.limits.handshakeTimeoutMs;
    if (deadline > 0) {
      const timer = setTimeout(() => {
        if (session.destroyed) return;
        const why = `HBONE handshake did not finish within ${deadline} ms`;
        this.onRefused(`tls: ${why}`);
        this.log.warn({ peer: sock.remoteAddress, error: why }, 'hbone handshake refused');
        session.destroy();
      }, deadline);
      timer.unref();
      session.once('remoteSettings', () => clearTimeout(timer));
      session.once('close', () => clearTimeout(timer));
    }
    this.log.debug({ peerIdentity: verdict, peerSerial: peerCert.serialNumber, peer: sock.remoteAddress }, 'hbone client accepted');
    this.sessions.add(session);
    session.once('close', () => this.sessions.delete(session));
    session.on('error', () => undefined);
    session.setLocalWindowSize(CONNECTION_WINDOW);
    keepalive(session, DEFAULT_KEEPALIVE, (err) => this.log.warn({ error: err.message }, 'dropping unresponsive hbone client'));
  }

  private onRequest(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => undefined);
    const peerIdentity = peerIdentities.get(stream.session as http2.ServerHttp2Session);
    if (!peerIdentity) {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    const d = decideInbound(headers[':method'], headers[':authority'], this.podIps);
    if ('status' in d) {
      this.onRefused(d.reason);
      this.log.warn({ peerIdentity, status: d.status, reason: d.reason }, 'hbone request refused');
      stream.respond({ ':status': d.status }, { endStream: true });
      return;
    }
    const sock = stream.session?.socket;
    this.onStream({
      stream, peerIdentity, peerAddress: sock?.remoteAddress ?? '', peerPort: sock?.remotePort ?? 0,
      localAddress: `${sock?.localAddress ?? ''}:${sock?.localPort ?? 0}`, upstream: d.upstream, headers,
    });
  }
}

const peerIdentities = new WeakMap<http2.ServerHttp2Session, string>();

/** What becomes of an upstream socket when its HBONE stream closes. Pure. */
export type UpstreamFate = 'keep' | 'reset' | 'linger';

/**
 * A stream reset by either side (any RST_STREAM code, CANCEL included: Node does not mark a CANCEL as an error), or
 * torn down before the peer ended its side (its connection went away), takes its upstream with it. A stream closed in
 * order leaves the upstream to finish on its own, but not for ever when the app has not taken all the bytes written to
 * it (`linger`).
 */
export function upstreamFate(rstCode: number | undefined, peerEnded: boolean, upstreamWritesDone: boolean): UpstreamFate {
  if (rstCode !== undefined && rstCode !== http2.constants.NGHTTP2_NO_ERROR) return 'reset';
  if (!peerEnded) return 'reset';
  return upstreamWritesDone ? 'keep' : 'linger';
}

/**
 * Closes a socket at once, with a TCP reset when Node can send one. Once end() was called (a pipe ends the upstream
 * when the peer's side of the stream ends, a reset included) libuv refuses the reset (EINVAL) and Node then drops the
 * handle without closing it: resetAndDestroy() leaked the descriptor. destroy() closes it (the kernel still resets a
 * connection whose received bytes were never read).
 */
export function abortSocket(sock: Socket): void {
  if (sock.destroyed) return;
  if (sock.writableEnded) sock.destroy();
  else sock.resetAndDestroy();
}

/**
 * Ties an inbound stream's upstream socket to the stream (Node data path; the native library does the same in C).
 * Without this an app that never reads kept its socket, and the bytes queued for it, after the peer reset the stream,
 * or for ever after a stream closed in order: one leaked descriptor and up to a stream window of memory each.
 */
export function releaseUpstreamWithStream(stream: Duplex & { rstCode?: number }, upstream: Socket, lingerMs: number, onGiveUp: (why: string) => void): void {
  let peerEnded = false;
  stream.once('end', () => (peerEnded = true));
  const decide = (): void => {
    if (upstream.destroyed) return;
    const fate = upstreamFate(stream.rstCode, peerEnded || stream.readableEnded, upstream.writableFinished);
    if (fate === 'reset') {
      abortSocket(upstream);
      return;
    }
    if (fate === 'keep' || lingerMs <= 0) return;
    const timer = setTimeout(() => {
      if (upstream.destroyed || upstream.writableFinished) return;
      onGiveUp(`the app took none of the last ${upstream.writableLength} bytes within ${lingerMs} ms after the stream closed`);
      abortSocket(upstream);
    }, lingerMs);
    timer.unref();
    upstream.once('close', () => clearTimeout(timer));
    upstream.once('finish', () => clearTimeout(timer));
  };
  if (stream.closed || stream.destroyed) decide();
  else stream.once('close', decide);
}
