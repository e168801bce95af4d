// The seam between the forwarder and whoever carries HBONE bytes (the native relay, hbone/native.ts): accept a pod's
// outbound connections, open an outbound CONNECT stream for an app socket, serve a pod's 15008, close a pod's pooled connections. Types only.
import type { Netns } from '../platform/netns.js';
import type { IpFamily } from '../protocol/address.js';
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

/** A connection an outbound listener accepted: its fd is the receiver's, never read yet (every byte is still in the socket). */
export interface AcceptedConnection {
  fd: number;
  /** The app's end (its address as text, IPv6 without brackets). */
  src: { address: string; port: number };
  /** The original destination (under REDIRECT the conntrack entry's, else the socket's local address). */
  dst: { address: string; port: number };
}

/** A pod's outbound listener (15001) whose connections the data path accepts (see HboneDataPath.listenOutbound). */
export interface OutboundListener {
  readonly listening: boolean;
  /** The agent's own listening fd while it listens (what a take-over hands to the successor), else undefined. */
  readonly fd: number | undefined;
  /**
   * Stops accepting and closes the listening socket. `drain`: connections already accepted and on their way are still
   * handed to onAccepted (a take-over's drain); else they are reset (the pod is leaving). Idempotent.
   */
  close(drain: boolean): void;
}

/** What the forwarder needs of the data path. */
export interface HboneDataPath {
  /**
   * Accepts a pod's outbound connections on listening socket `fd` (of `family`; the caller keeps it and the data path
   * uses a duplicate) and hands each to `onAccepted`, which owns its fd from the call on. The data path accepts only as
   * fast as onAccepted takes them, so a connect flood waits in the pod's own accept queue; `onError` hears why it could
   * not accept for a while (out of fds: it tries again a second later), or (`gone`) that it could not listen at all: it
   * is then not listening, and close() still closes `fd`. Throws if it cannot listen (the caller still owns `fd`).
   */
  listenOutbound(fd: number, family: IpFamily, onAccepted: (c: AcceptedConnection) => void, onError?: (error: string, gone: boolean) => void): OutboundListener;
  /**
   * Opens a CONNECT stream to `target` for `authority` carrying the app socket `down` (an fd never read), which the
   * data path owns from the call on. Rejects (AMB_ERR_HBONE_CONNECT) when no connection can be had, or when
   * `cancelled()` is true once one is: `down` has then been reset.
   */
  connect(target: HboneTarget, down: number, authority: string, headers: Record<string, string>, cancelled?: () => boolean): Promise<HboneOutbound>;
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
