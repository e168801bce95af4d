// The listener hand-over of a take-over (the predecessor's in-pod listening sockets passed to the successor before it
// adopts pods): its messages and their parsing, and the pure checks and decisions around it. I/O: listener-transfer.ts.
import { AF_INET, AF_INET6, SOCK_STREAM } from '../platform/libc.js';
import { formatHostPort, sameIp, type IpFamily } from '../protocol/address.js';
import { INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT } from '../redirect/constants.js';
import { podCapturesIpv6 } from '../redirect/types.js';
import { HandoverProtocolError, isHandoverToken, type HandoverMessage } from './protocol.js';

// Why before adopting: the in-pod listeners are not SO_REUSEPORT (a container in the pod could otherwise join the group
// and take a share of the pod's captured traffic), so the successor cannot bind its own beside the predecessor's; it
// carries on with the same kernel sockets instead, accept queues included (nothing is reset when the predecessor closes
// its copies). The successor opens its listener inbox before `begin` (whose `listeners` and `inbox` name it); the
// predecessor, frozen, connects and per batch sends `listeners` (one descriptor per listener attached) -> `ack` (the
// indexes the successor checked and took), then `done`, then `released` on the take-over channel. It keeps its own
// copies and accepts on them until `ready`: a connection either agent accepts meanwhile is served by that agent.

/** The listener hand-over version this agent speaks (in `begin.listeners`, `released.listeners` and every message's `v`). */
export const LISTENER_HANDOVER_VERSION = 1;

/** What a listener does: outbound 15001, inbound plaintext 15006, inbound HBONE 15008. */
export type ListenerRole = 'outbound' | 'inbound' | 'hbone';

/**
 * The listeners the agent may have in an enrolled pod: each role per family (IPv6's with --capture-ipv6 only). The IPv4
 * kinds keep their names, so a successor and a predecessor that both run IPv4 only speak the same messages as before.
 */
export type ListenerKind = ListenerRole | 'outbound6' | 'inbound6' | 'hbone6';
export const LISTENER_KINDS: readonly ListenerKind[] = ['outbound', 'inbound', 'hbone', 'outbound6', 'inbound6', 'hbone6'];

/**
 * Where each kind listens inside the pod (what a handed socket must be bound to). Outbound is on loopback: REDIRECT of a
 * locally generated packet sends it to 127.0.0.1, or to ::1 for IPv6.
 */
export const LISTENER_ADDRESSES: Readonly<Record<ListenerKind, { role: ListenerRole; family: IpFamily; address: string; port: number }>> = {
  outbound: { role: 'outbound', family: 'ipv4', address: '127.0.0.1', port: OUTBOUND_PORT },
  inbound: { role: 'inbound', family: 'ipv4', address: '0.0.0.0', port: INBOUND_PLAINTEXT_PORT },
  hbone: { role: 'hbone', family: 'ipv4', address: '0.0.0.0', port: INBOUND_HBONE_PORT },
  outbound6: { role: 'outbound', family: 'ipv6', address: '::1', port: OUTBOUND_PORT },
  inbound6: { role: 'inbound', family: 'ipv6', address: '::', port: INBOUND_PLAINTEXT_PORT },
  hbone6: { role: 'hbone', family: 'ipv6', address: '::', port: INBOUND_HBONE_PORT },
};

/**
 * The listeners a pod gets: the IPv4 ones always (as before IPv6 capture), the IPv6 ones only when the backend captures
 * IPv6 and the pod has an IPv6 address. Never an IPv6 listener otherwise: it would carry IPv6 the workload directory does
 * not call mesh (in clear). Pure.
 */
export function podListenerKinds(podIps: readonly string[], captured: readonly IpFamily[]): ListenerKind[] {
  const v6 = podCapturesIpv6(podIps, captured);
  return LISTENER_KINDS.filter((k) => LISTENER_ADDRESSES[k].family === 'ipv4' || v6);
}

/** One pod's handed listeners by kind (raw fds, owned by whoever holds the map). */
export type HandedListeners = Partial<Record<ListenerKind, number>>;

/** The successor's listener inbox: in the state dir (root only), named by the token it sends in `begin`. Pure. */
export function listenerInboxPath(stateDir: string, token: string): string {
  if (!isHandoverToken(token)) throw new HandoverProtocolError(`listener inbox token ${JSON.stringify(token)} is not 16 to 64 hex digits`);
  return `${stateDir.replace(/\/+$/, '')}/listeners.${token}.sock`;
}

/** Bounds of one listener hand-over; every wait on the other agent is one of these. */
export interface ListenerLimits {
  /** Listeners per message (one descriptor each; the kernel allows 253 per message). */
  perMessage: number;
  /** Bytes of one message's JSON. */
  maxMessageBytes: number;
  /** Listeners in one take-over at most (three per pod and family); a predecessor with more refuses the take-over. */
  total: number;
  /** How long the predecessor waits to connect and for each `ack`; how long either side waits to send one message. */
  ackMs: number;
  /** How long the successor's inbox waits for the predecessor to connect (from `begin`), and for each next message. */
  idleMs: number;
  /** The whole transfer, on the predecessor's side. */
  totalMs: number;
}

export const LISTENER_LIMITS: ListenerLimits = { perMessage: 48, maxMessageBytes: 64 * 1024, total: 6 * 4096, ackMs: 5000, idleMs: 30_000, totalMs: 60_000 };

/** Which pod (its attachment key, the same in both agents) and which of its listeners a descriptor is. */
export interface ListenerMeta {
  pod: string;
  kind: ListenerKind;
}

export type ListenerMessage =
  | { v: number; type: 'listeners'; batch: number; listeners: ListenerMeta[] }
  | { v: number; type: 'ack'; batch: number; accepted: number[] }
  | { v: number; type: 'done'; sent: number };

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HandoverProtocolError(`listener field "${what}" must be an object`);
  return v as Record<string, unknown>;
}

function count(o: Record<string, unknown>, key: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new HandoverProtocolError(`listener field "${key}" must be a non-negative integer`);
  return v;
}

function parseMeta(v: unknown): ListenerMeta {
  const o = obj(v, 'listener');
  if (typeof o.pod !== 'string' || o.pod.length === 0 || o.pod.length > 512) throw new HandoverProtocolError('listener field "pod" must be a string of 1 to 512 characters');
  if (!LISTENER_KINDS.includes(o.kind as ListenerKind)) throw new HandoverProtocolError(`listener field "kind" must be one of ${LISTENER_KINDS.join(', ')}`);
  return { pod: o.pod, kind: o.kind as ListenerKind };
}

/**
 * Parses one listener message and checks it against the descriptors that came with it: a `listeners` message carries
 * one per listener and at most `limits.perMessage`; the others carry none. Throws HandoverProtocolError otherwise. Pure.
 */
export function parseListenerMessage(data: Buffer, fdCount: number, limits: Pick<ListenerLimits, 'perMessage' | 'maxMessageBytes'> = LISTENER_LIMITS): ListenerMessage {
  if (data.length > limits.maxMessageBytes) throw new HandoverProtocolError(`listener message over ${limits.maxMessageBytes} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch {
    throw new HandoverProtocolError('listener message is not JSON');
  }
  const o = obj(v, 'message');
  if (o.v !== LISTENER_HANDOVER_VERSION) throw new HandoverProtocolError(`listener message version ${JSON.stringify(o.v)} is not ${LISTENER_HANDOVER_VERSION}`);
  const noFds = (): void => {
    if (fdCount !== 0) throw new HandoverProtocolError(`a "${String(o.type)}" message carries no descriptors (got ${fdCount})`);
  };
  switch (o.type) {
    case 'listeners': {
      if (!Array.isArray(o.listeners) || o.listeners.length === 0 || o.listeners.length > limits.perMessage) {
        throw new HandoverProtocolError(`listener field "listeners" must list 1 to ${limits.perMessage} listeners`);
      }
      if (fdCount !== o.listeners.length) throw new HandoverProtocolError(`${o.listeners.length} listeners need ${o.listeners.length} descriptors (got ${fdCount})`);
      return { v: LISTENER_HANDOVER_VERSION, type: 'listeners', batch: count(o, 'batch'), listeners: o.listeners.map(parseMeta) };
    }
    case 'ack': {
      noFds();
      const a = o.accepted;
      if (!Array.isArray(a) || a.length > limits.perMessage || a.some((i) => !Number.isInteger(i) || (i as number) < 0 || (i as number) >= limits.perMessage) || new Set(a).size !== a.length) {
        throw new HandoverProtocolError('listener field "accepted" must list distinct listener indexes of the batch');
      }
      return { v: LISTENER_HANDOVER_VERSION, type: 'ack', batch: count(o, 'batch'), accepted: a as number[] };
    }
    case 'done':
      noFds();
      return { v: LISTENER_HANDOVER_VERSION, type: 'done', sent: count(o, 'sent') };
    default:
      throw new HandoverProtocolError(`unknown listener message type ${JSON.stringify(o.type)}`);
  }
}

export function encodeListenerMessage(m: ListenerMessage): Buffer {
  return Buffer.from(JSON.stringify(m), 'utf8');
}

/** What the kernel says of a received descriptor (platform/sockets.ts listenerFacts), without the netns. */
export interface ListenerShape {
  domain: number;
  type: number;
  listening: boolean;
  local: { address: string; port: number } | undefined;
}

/**
 * Why a received descriptor must not be used as `kind`'s listener of a pod (undefined: it may). It must be a TCP socket
 * of the kind's family (IPv4, or IPv6 for the `6` kinds) that listens, bound to the kind's address and port, in the
 * pod's network namespace (`inPodNetns`: compared by the caller, SIOCGSKNS against the pod's record). Pure.
 */
export function listenerProblem(kind: ListenerKind, shape: ListenerShape, inPodNetns: boolean): string | undefined {
  const want = LISTENER_ADDRESSES[kind];
  const v6 = want.family === 'ipv6';
  if (shape.domain !== (v6 ? AF_INET6 : AF_INET) || shape.type !== SOCK_STREAM) return `not an ${v6 ? 'IPv6' : 'IPv4'} TCP socket`;
  if (!shape.listening) return 'not listening';
  if (!shape.local || !sameIp(shape.local.address, want.address) || shape.local.port !== want.port) {
    return `bound to ${shape.local ? formatHostPort(shape.local.address, shape.local.port) : 'no address'}, not ${formatHostPort(want.address, want.port)}`;
  }
  if (!inPodNetns) return 'not in the pod\'s network namespace';
  return undefined;
}

/**
 * Why a predecessor refuses a `begin` for its listeners (undefined: it hands them over). A successor that takes none (an
 * older agent) would bind SO_REUSEPORT listeners beside ours, which are not: it could not adopt a single pod. Pure.
 */
export function listenerRefusal(begin: Extract<HandoverMessage, { type: 'begin' }>): string | undefined {
  if (begin.listeners === LISTENER_HANDOVER_VERSION && begin.inbox !== undefined) return undefined;
  if (begin.listeners === undefined) return 'the new agent does not take listeners over (an older version): stop this agent first, then start it';
  return `the new agent speaks listener hand-over version ${begin.listeners}, this one ${LISTENER_HANDOVER_VERSION}: stop this agent first, then start it`;
}

/** What the successor's listener inbox got. */
export interface ListenerInboxTally {
  received: number;
  /** Checked and kept (listenerProblem found nothing). */
  accepted: number;
  /** Closed at once: malformed, or failed a check, or a second one of a pod's kind. */
  refused: number;
  /** The predecessor's `done` (how many it says it sent); absent when the transfer ended without it. */
  done?: { sent: number };
  /** Why the inbox ended early (a timeout, a protocol error, the predecessor gone). */
  problem?: string;
}

/** How the successor adopts pods after `released`. */
export type ListenerDecision =
  /** With the handed listeners; a pod or kind the predecessor had none of binds fresh (not SO_REUSEPORT). */
  | { plan: 'handed' }
  /** An older predecessor kept its (SO_REUSEPORT) listeners: bind SO_REUSEPORT beside them, once, and say why. */
  | { plan: 'reuseport'; warning: string }
  /** Adopt nothing: a pod whose listener did not arrive could get none (the predecessor's holds the port). */
  | { plan: 'fail'; reason: string };

/** The successor's decision from the predecessor's `released` and its inbox's tally. Pure. */
export function listenerDecision(released: Extract<HandoverMessage, { type: 'released' }>, tally: ListenerInboxTally): ListenerDecision {
  if (released.listeners === undefined) {
    return {
      plan: 'reuseport',
      warning: 'the running agent is an older version that does not hand its listeners over: this agent binds its own beside them with SO_REUSEPORT ' +
        '(as that version did), so connections queued on the old listeners when they close are reset, and the pods\' listeners stay SO_REUSEPORT until the agent restarts without a take-over',
    };
  }
  if (released.listeners !== LISTENER_HANDOVER_VERSION) return { plan: 'fail', reason: `the running agent handed its listeners over under version ${released.listeners}, not ${LISTENER_HANDOVER_VERSION}` };
  if (tally.problem) return { plan: 'fail', reason: `the listener hand-over failed: ${tally.problem}` };
  if (!tally.done) return { plan: 'fail', reason: 'the listener hand-over ended without the running agent\'s "done"' };
  if (tally.done.sent !== tally.received) return { plan: 'fail', reason: `the running agent sent ${tally.done.sent} listeners, ${tally.received} arrived` };
  if (tally.refused > 0) return { plan: 'fail', reason: `${tally.refused} of ${tally.received} listeners handed over failed their checks (closed, never used)` };
  return { plan: 'handed' };
}
