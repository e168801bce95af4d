// TCP sockets created inside a pod's network namespace and handed to Node, and SO_ORIGINAL_DST; IPv4 or IPv6, each
// socket's family taken from the address it is given (an IPv6 listener is IPv6-only, beside the IPv4 one on its port).
// Sockets are made with koffi inside withNetns (so they belong to the pod) and wrapped by net.Server / net.Socket afterwards.
// In-pod listeners are not SO_REUSEPORT (nothing else may join them); a take-over hands the same sockets to the successor
// (handover/listener-transfer.ts), whose facts it checks with listenerFacts before use.
import { fstatSync } from 'node:fs';
import net from 'node:net';
import {
  SIOCGSKNS, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_STREAM, SOL_IP, SOL_IPV6, SOL_SOCKET, SO_ACCEPTCONN, SO_MARK, SO_ORIGINAL_DST,
  SO_REUSEADDR, SO_REUSEPORT, AF_INET, AF_INET6, IP6T_SO_ORIGINAL_DST, IPV6_TRANSPARENT, IPV6_V6ONLY, IP_BIND_ADDRESS_NO_PORT,
  IP_TRANSPARENT, SOCKADDR_IN6_SIZE, bind, close, connectStart, dupCloexec, getsockname, getsockoptBuf, inetAddress, ioctlNoArg, listen,
  localPort, parseSockaddrIn, parseSockaddrIn6, parseSockaddrInet, setsockoptInt, sockaddrIn, sockaddrIn6, sockaddrInet, socket,
} from './libc.js';
import { normalizeIp, type IpFamily } from '../protocol/address.js';
import { socketKind } from './fd-passing.js';
import { type Netns, type NetnsId, withNetns } from './netns.js';

export interface ListenOptions {
  /** An IPv4 or IPv6 address (`0.0.0.0`, `::`): the socket's family follows it. */
  address: string;
  port: number;
  backlog?: number;
  /** IP_TRANSPARENT (IPV6_TRANSPARENT), for listeners that receive packets steered to them without NAT. */
  transparent?: boolean;
  /** Accepted sockets are not read by Node (their fds go to the native data plane, which must see every byte). */
  pauseOnConnect?: boolean;
  /**
   * SO_REUSEPORT: another socket of the same user may bind the same address and share the connections. Only for
   * listeners beside an older agent's (which were all SO_REUSEPORT) and the agent's own-netns ports; never by default.
   */
  reusePort?: boolean;
  /** A listening socket already made (handed over by a predecessor agent): used instead of binding a new one. */
  fd?: number;
}

/** IP_TRANSPARENT, at its family's level: the one socket flag under both names. */
function setTransparent(fd: number, family: number): void {
  if (family === AF_INET6) setsockoptInt(fd, SOL_IPV6, IPV6_TRANSPARENT, 1, 'IPV6_TRANSPARENT');
  else setsockoptInt(fd, SOL_IP, IP_TRANSPARENT, 1, 'IP_TRANSPARENT');
}

/**
 * A listening socket bound inside ns, as a raw fd for net.Server#listen({ fd }). An IPv6 one is IPV6_V6ONLY whatever
 * the system default (net.ipv6.bindv6only): it never takes IPv4 (which has its own listener and own rules), and `::`
 * does not collide with `0.0.0.0` on the same port.
 */
export function listenFdIn(ns: Netns, opts: ListenOptions): number {
  const { family } = inetAddress(opts.address);
  const addr = sockaddrInet(opts.address, opts.port);
  return withNetns(ns, () => {
    const fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    try {
      setsockoptInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, 'SO_REUSEADDR');
      if (opts.reusePort) setsockoptInt(fd, SOL_SOCKET, SO_REUSEPORT, 1, 'SO_REUSEPORT');
      if (family === AF_INET6) setsockoptInt(fd, SOL_IPV6, IPV6_V6ONLY, 1, 'IPV6_V6ONLY');
      if (opts.transparent) setTransparent(fd, family);
      bind(fd, addr);
      listen(fd, opts.backlog ?? 511);
      return fd;
    } catch (err) {
      close(fd);
      throw err;
    }
  });
}

/** What a listening socket is, from the kernel: a received descriptor is used only once these match what it should be. */
export interface ListenerFacts {
  domain: number;
  type: number;
  /** SO_ACCEPTCONN. */
  listening: boolean;
  /** getsockname (IPv4 and IPv6 only: anything else has no address here). */
  local: { address: string; port: number } | undefined;
  /** The network namespace the socket belongs to (SIOCGSKNS), identified like a Netns. */
  netns: NetnsId;
}

/** Reads a descriptor's ListenerFacts; throws when it is not a socket (or the kernel lacks SIOCGSKNS, Linux < 4.9). */
export function listenerFacts(fd: number): ListenerFacts {
  const kind = socketKind(fd);
  const listening = getsockoptBuf(fd, SOL_SOCKET, SO_ACCEPTCONN, 4, 'SO_ACCEPTCONN').readInt32LE(0) === 1;
  const local = kind.domain === AF_INET || kind.domain === AF_INET6 ? parseSockaddrInet(getsockname(fd)) : undefined;
  const nsFd = ioctlNoArg(fd, SIOCGSKNS, 'SIOCGSKNS');
  try {
    const st = fstatSync(nsFd);
    return { ...kind, listening, local, netns: { inode: st.ino, dev: st.dev } };
  } finally {
    close(nsFd);
  }
}

/** A net.Server listening inside ns; resolves once Node has adopted the socket. */
export async function listenIn(ns: Netns, opts: ListenOptions, onConnection: (s: net.Socket) => void): Promise<net.Server> {
  const fd = opts.fd ?? listenFdIn(ns, opts);
  const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: opts.pauseOnConnect ?? false }, onConnection);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    close(fd);
    throw err;
  }
  return server;
}

export interface DialOptions {
  /** An IPv4 or IPv6 address (the socket's family follows it; an IPv4-mapped one is its IPv4 address). */
  host: string;
  port: number;
  /** SO_MARK for the agent's own sockets: the agent mark, which the in-pod rules exempt, or a backend's appMark. */
  mark: number;
  timeoutMs?: number;
  /**
   * Keep the write side open after the peer's FIN (default true: relays propagate half-closes themselves).
   * False for sockets carrying a protocol (HBONE), where a FIN means the peer is gone.
   */
  allowHalfOpen?: boolean;
  /** Node never reads the socket (its fd goes to the native data plane, which must see every byte). */
  paused?: boolean;
  /**
   * Connect from this (usually non-local) address: IP_TRANSPARENT, bound before connect (inbound source preservation,
   * so the app sees its client); of the host's family. The port is the kernel's choice; `avoidPort` is never chosen (see
   * transparentSocket).
   */
  source?: { address: string; avoidPort?: number };
}

/** How long a dial's connect may take unless told otherwise (dialFrom's timeoutMs; the forwarder's native dials too). */
export const DIAL_TIMEOUT_MS = 10_000;

/** How many sockets transparentSocket tries before giving up (each further try is a 1 in ~28,000 event). */
const SOURCE_BIND_TRIES = 4;

/**
 * A TCP socket inside the current netns, IP_TRANSPARENT and bound to `address` (not one of ours: the client's), IPv4 or
 * IPv6 by the address (IP_BIND_ADDRESS_NO_PORT is a SOL_IP option that IPv6 sockets honour too).
 * Without `avoidPort` the port is left to connect() (IP_BIND_ADDRESS_NO_PORT: ports are unique per 4-tuple, not per
 * address, so many connections from one client do not exhaust them). With it the port is bound now and checked: the
 * plaintext path passes the client's own port, because under REDIRECT the client's connection holds a conntrack entry
 * with our tuple's exact original direction (client:port -> pod:port), and a new connection on that tuple would be
 * taken for the old one (NATed back to 15006). A socket that got that port is held until another one is bound.
 */
export function transparentSocket(address: string, mark: number, avoidPort?: number): number {
  const { family, address: canonical } = inetAddress(address);
  const addr = family === AF_INET6 ? sockaddrIn6(canonical, 0) : sockaddrIn(canonical, 0);
  const held: number[] = [];
  try {
    for (let i = 0; i < SOURCE_BIND_TRIES; i++) {
      const s = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
      held.push(s);
      setsockoptInt(s, SOL_SOCKET, SO_MARK, mark, 'SO_MARK');
      setTransparent(s, family);
      if (avoidPort === undefined) setsockoptInt(s, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1, 'IP_BIND_ADDRESS_NO_PORT');
      bind(s, addr);
      if (avoidPort === undefined || localPort(s) !== avoidPort) return held.pop() as number;
    }
    throw new Error(`no source port for ${address} other than ${avoidPort} after ${SOURCE_BIND_TRIES} tries`);
  } finally {
    for (const s of held) close(s);
  }
}

/**
 * The non-blocking socket a dial from inside ns uses (marked; transparent and bound to `source` when given), with the
 * target's canonical address. Throws when it cannot be made.
 */
function dialSocket(ns: Netns, opts: Pick<DialOptions, 'host' | 'port' | 'mark' | 'source'>): { fd: number; host: string; family: number } {
  const target = inetAddress(opts.host);
  const source = opts.source;
  if (source && inetAddress(source.address).family !== target.family) {
    throw new Error(`connect ${opts.host}:${opts.port} from ${source.address}: not the same address family`);
  }
  const fd = withNetns(ns, () => {
    if (source) return transparentSocket(source.address, opts.mark, source.avoidPort);
    const s = socket(target.family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC);
    try {
      setsockoptInt(s, SOL_SOCKET, SO_MARK, opts.mark, 'SO_MARK');
      return s;
    } catch (err) {
      close(s);
      throw err;
    }
  });
  return { fd, host: target.address, family: target.family };
}

/**
 * Starts a dial from inside ns (as dialFrom, without Node): the non-blocking socket with its connect() in flight (or
 * done), for the native data plane to finish (NativeLib answerConnect). No net.Socket is made per inbound HBONE stream
 * (see the README's "Connection cost"). Throws when the socket cannot be made or the connect fails at once; the fd is
 * the caller's.
 */
export function startDial(ns: Netns, opts: Pick<DialOptions, 'host' | 'port' | 'mark' | 'source'>): number {
  const { fd, host, family } = dialSocket(ns, opts);
  try {
    connectStart(fd, family === AF_INET6 ? sockaddrIn6(host, opts.port) : sockaddrIn(host, opts.port));
  } catch (err) {
    close(fd);
    throw err;
  }
  return fd;
}

/** Connects from inside ns with the given mark (and from `source` when given); resolves with the connected socket. */
export function dialFrom(ns: Netns, opts: DialOptions): Promise<net.Socket> {
  let fd: number;
  let host: string;
  try {
    ({ fd, host } = dialSocket(ns, opts));
  } catch (err) {
    return Promise.reject(err instanceof Error ? err : new Error(String(err))); // the callers' .then handles every failure
  }
  return new Promise((resolve, reject) => {
    // pauseOnCreate (not in @types/node): no readStart, so not even the first bytes after the connect are read by Node.
    const sockOpts = { fd, readable: true, writable: true, allowHalfOpen: opts.allowHalfOpen ?? true, pauseOnCreate: opts.paused ?? false } as net.SocketConstructorOpts;
    const sock = new net.Socket(sockOpts);
    const timer = setTimeout(() => sock.destroy(new Error(`connect ${opts.host}:${opts.port} timed out`)), opts.timeoutMs ?? DIAL_TIMEOUT_MS);
    const settled = (): void => clearTimeout(timer);
    sock.once('error', (err) => {
      settled();
      reject(err);
    });
    sock.connect(opts.port, host, () => {
      settled();
      sock.removeAllListeners('error');
      resolve(sock);
    });
  });
}

interface HandleWithFd {
  fd?: number;
}

/** A listening net.Server's fd (its libuv handle's), else undefined: what a take-over hands to the successor. */
export function serverFd(server: net.Server): number | undefined {
  const fd = (server as unknown as { _handle?: HandleWithFd | null })._handle?.fd;
  return server.listening && typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/** The socket's fd while Node holds it (its libuv handle's), else undefined. */
export function handleFd(sock: net.Socket): number | undefined {
  const fd = (sock as unknown as { _handle?: HandleWithFd | null })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * The destination the client meant before REDIRECT rewrote it (SO_ORIGINAL_DST; `family` 'ipv6', the family of the
 * listener that accepted it: IP6T_SO_ORIGINAL_DST), or the socket's local address when it was not NATed (TPROXY /
 * sk_assign steering). One getsockopt either way: the caller knows the family, so no probing for it.
 */
export function originalDst(sock: net.Socket, family: IpFamily = 'ipv4'): { address: string; port: number } {
  const fd = handleFd(sock);
  if (fd !== undefined) {
    try {
      const { address, port } = family === 'ipv6'
        ? parseSockaddrIn6(getsockoptBuf(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, SOCKADDR_IN6_SIZE, 'IP6T_SO_ORIGINAL_DST'))
        : parseSockaddrIn(getsockoptBuf(fd, SOL_IP, SO_ORIGINAL_DST, 16, 'SO_ORIGINAL_DST'));
      return { address, port };
    } catch {
      // Not NATed: the local address is the original destination.
    }
  }
  if (!sock.localAddress || sock.localPort === undefined) throw new Error('socket has no local address');
  return { address: normalizeIp(sock.localAddress), port: sock.localPort };
}

/** Closes a socket fd with a TCP reset (the app sees its connection refused, not ended); owned from the call on. */
export function resetFd(fd: number): void {
  try {
    new net.Socket({ fd, readable: false, writable: false }).resetAndDestroy();
  } catch {
    close(fd);
  }
}

/**
 * Takes a socket's connection away from Node: a close-on-exec duplicate of its fd, then the Node socket is destroyed
 * (the duplicate keeps the connection open). The socket must never have been read by Node (see `paused`, `pauseOnConnect`).
 */
export function takeFd(sock: net.Socket): number {
  try {
    const fd = handleFd(sock);
    if (fd === undefined) throw new Error('socket has no file descriptor');
    if (sock.readableLength > 0) throw new Error('socket already has buffered bytes: it must not be read before its fd is taken');
    return dupCloexec(fd);
  } finally {
    // Either way Node lets go of it: the duplicate keeps the connection, or (on failure, e.g. EMFILE) nothing does.
    sock.destroy();
  }
}
