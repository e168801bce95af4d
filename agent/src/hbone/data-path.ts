// The seam between the forwarder and whoever carries HBONE bytes (the native relay, hbone/native.ts): open an outbound
// CONNECT stream for an app socket, serve a pod's 15008, close a pod's pooled connections. Types only.
import type net from 'node:net';
import type { Netns } from '../platform/netns.js';
import type { HboneTarget } from './pool.js';

/** How a stream ended: bytes read from / written to its app socket, and why it failed if it did. */
export interface HboneStreamEnd {
  bytesIn: number;
  bytesOut: number;
  error?: string;
  /** Reset (by either end, a policy close, or a session failure) rather than closed in order. */
  reset: boolean;
  /** Inbound, answered with answerConnect: the upstream connect failed or timed out (`error` says how); answered 503. */
  connectFailed?: boolean;
}

/** One CONNECT stream whose bytes the data path pumps between its app socket and the tunnel. */
export interface HboneStream {
  readonly id: number;
  /** Live counters: bytes read from the app socket and written to it. */
  bytes(): { in: number; out: number };
  /** Resets the stream (the app socket gets a TCP reset). */
  close(): void;
  readonly closed: Promise<HboneStreamEnd>;
  /** True as soon as the stream's end is known (set in the same step as `closed` resolves, not a tick later). */
  readonly isClosed: boolean;
}

/**
 * An outbound stream: `ready` resolves on 200, rejects with HboneStatusError, the stream's or session's failure (reset or
 * refused before the answer, connection lost), or when no answer came within the pool's answerTimeoutMs. It always settles.
 */
export interface HboneOutbound extends HboneStream {
  readonly ready: Promise<void>;
}

/** A CONNECT request that arrived on a pod's 15008, verified peer identity included. Answer it exactly once. */
export interface HboneInboundRequest {
  stream: HboneStream;
  method: string;
  authority: string;
  peerIdentity: string;
  peerAddress: string;
  peerPort: number;
  /** The tunnel's local end (`podIP:15008`). */
  localAddress: string;
  /** A refusal (any status but 200: a 200 without an upstream is sent as 503); the upstream goes through answerConnect. */
  answer(status: number): void;
  /**
   * Answers once the upstream is connected, without Node: `fd` is a non-blocking socket whose connect is in flight
   * (startDial), owned by the data path from the call on. 200 when it connects; 503 when it fails or has not connected
   * within `timeoutMs`, and then the stream's end says so (connectFailed, with the reason in `error`).
   */
  answerConnect(fd: number, timeoutMs: number): void;
}

/** How a pod listener gets its socket: a handed one (`fd`), or a new one, SO_REUSEPORT only when asked. */
export interface ListenSocket {
  /** Where a new one binds: `0.0.0.0` (the default) or `::` (IPv6 only: IPV6_V6ONLY, beside the IPv4 one). */
  address?: string;
  fd?: number;
  reusePort?: boolean;
}

export interface HboneListener {
  readonly listening: boolean;
  /** The listening socket's fd while it listens (what a take-over hands to the successor), else undefined. */
  readonly fd: number | undefined;
  /** Closes the listener and its sessions at once (their streams are cut). */
  close(): Promise<void>;
  /**
   * For a take-over's drain: closes this agent's copy of the listening socket (the successor, which was handed the same
   * socket, keeps accepting from its queue) and closes its sessions
   * gracefully (GOAWAY: open streams finish, peers open new sessions elsewhere). close() still cuts what is left.
   */
  stopAccepting(): Promise<void>;
}

/** What the forwarder needs of the data path. */
export interface HboneDataPath {
  /**
   * Opens a CONNECT stream to `target` for `authority` carrying the app socket `down` (accepted with pauseOnConnect).
   * Rejects (AMB_ERR_HBONE_CONNECT) when no connection can be had: `down` is then still the caller's; once the stream
   * exists, the data path owns it.
   */
  connect(target: HboneTarget, down: net.Socket, authority: string, headers: Record<string, string>): Promise<HboneOutbound>;
  /**
   * A pod's 15008 listener: clients must present a certificate chaining to the roots with a SPIFFE ID in `trustDomain`;
   * each CONNECT is handed to `onRequest`, refusals (handshake, identity, limits) reported to `onRefused`.
   * `socket`: a listening fd to use (handed over by a predecessor) instead of binding one, or SO_REUSEPORT for a new one;
   * its address family (IPv4 by default). A pod with IPv6 captured has one listener per family.
   */
  listen(
    ns: Netns,
    identity: string,
    trustDomain: string,
    onRequest: (r: HboneInboundRequest) => void,
    onRefused: (reason: string) => void,
    socket?: ListenSocket,
  ): Promise<HboneListener>;
  /** Closes every pooled connection from one source pod (it left the mesh). */
  closeFrom(srcIp: string): void;
}
