// The take-over protocol between a running agent (the predecessor) and a new one on the same state dir (the
// successor): its messages and their parsing, and the pure decisions around it (who starts how, what a drain counted).
import { randomBytes } from 'node:crypto';
import { AmbientError } from '../errors.js';

/** The event socket's endpoint a successor upgrades (HTTP/1.1 Upgrade) to speak this protocol on. */
export const HANDOVER_PATH = '/v1/handover';
/** The Upgrade token both sides check. */
export const HANDOVER_PROTOCOL = 'ambient-handover/1';

/** Lock files in the state dir: `agent.lock` is held by the agent that changes rules and records. */
export const AGENT_LOCK_FILE = 'agent.lock';
/**
 * `handover.lock`: held by an agent while it starts, and by a successor from its start until its predecessor has
 * exited (drain included). A third agent that finds it held is refused: at most two agents overlap, for one take-over.
 */
export const HANDOVER_LOCK_FILE = 'handover.lock';

/**
 * One line of the protocol (JSON, newline-terminated). In order:
 * successor `begin` -> predecessor hands its pods' listening sockets over (listener-transfer.ts), then `released` (it
 * has stopped changing anything and let go of agent.lock) or `refused`; successor `ready` (it owns the socket path and
 * accepts on the pods' listeners) -> predecessor `draining`, later `drained`, exit.
 * If the successor's connection ends before `ready`, the predecessor takes agent.lock back and carries on.
 */
export type HandoverMessage =
  /**
   * `listeners`: the listener hand-over version the successor takes on its listener inbox, `inbox` that inbox's token
   * (opened before `begin` is sent, so the predecessor can hand its listeners before `released`).
   */
  | { type: 'begin'; pid: number; listeners?: number; inbox?: string }
  /**
   * `listeners`: present when the predecessor handed its listeners over under that version (all of them, then `done`);
   * absent from an older predecessor, whose listeners are SO_REUSEPORT and stay its own.
   */
  | { type: 'released'; listeners?: number }
  | { type: 'refused'; reason: string }
  /**
   * `relays`: the relay hand-over version the successor accepts on its relay inbox, `inbox` that inbox's token (see
   * relayInboxPath); both absent: it takes none. `pid` (here and in `begin`) is for logs only: agents in pods each have
   * their own PID namespace (both are often PID 1), so nothing is decided on it.
   */
  | { type: 'ready'; pid: number; relays?: number; inbox?: string }
  /** `moved`: plain TCP relays handed to the successor before the drain (absent from an older predecessor). */
  | { type: 'draining'; connections: number; deadlineSeconds: number; moved?: number }
  | { type: 'drained'; drained: number; cut: number };

export class HandoverProtocolError extends AmbientError<'AMB_ERR_TAKEOVER'> {
  constructor(msg: string) {
    super('AMB_ERR_TAKEOVER', msg);
  }
}

/** A take-over could not happen (another is in progress, the running agent refused or vanished): the message says why. */
export class TakeOverError extends AmbientError<'AMB_ERR_TAKEOVER'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_TAKEOVER', msg, opts);
  }
}

function count(o: Record<string, unknown>, key: string): number {
  const v = o[key];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw new HandoverProtocolError(`handover message field "${key}" must be a non-negative integer`);
  return v;
}

function inboxToken(o: Record<string, unknown>): string | undefined {
  if (o.inbox !== undefined && !isHandoverToken(o.inbox)) throw new HandoverProtocolError('handover message field "inbox" must be a token of 16 to 64 hex digits');
  return o.inbox;
}

/** An optional version field and the optional inbox token that goes with it. */
function versionAndInbox(o: Record<string, unknown>, key: 'listeners'): { listeners?: number; inbox?: string } {
  const inbox = inboxToken(o);
  return { ...(o[key] !== undefined ? { [key]: count(o, key) } : {}), ...(inbox !== undefined ? { inbox } : {}) };
}

/** Parses one line; throws HandoverProtocolError on anything that is not a known message. Pure. */
export function parseHandoverMessage(line: string): HandoverMessage {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    throw new HandoverProtocolError('handover message is not JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HandoverProtocolError('handover message must be an object');
  const o = v as Record<string, unknown>;
  switch (o.type) {
    case 'begin':
      return { type: 'begin', pid: count(o, 'pid'), ...versionAndInbox(o, 'listeners') };
    case 'ready':
      inboxToken(o);
      return {
        type: 'ready', pid: count(o, 'pid'), ...(o.relays !== undefined ? { relays: count(o, 'relays') } : {}),
        ...(typeof o.inbox === 'string' ? { inbox: o.inbox } : {}),
      };
    case 'released':
      return { type: 'released', ...(o.listeners !== undefined ? { listeners: count(o, 'listeners') } : {}) };
    case 'refused':
      if (typeof o.reason !== 'string') throw new HandoverProtocolError('handover message field "reason" must be a string');
      return { type: 'refused', reason: o.reason };
    case 'draining':
      return {
        type: 'draining', connections: count(o, 'connections'), deadlineSeconds: count(o, 'deadlineSeconds'),
        ...(o.moved !== undefined ? { moved: count(o, 'moved') } : {}),
      };
    case 'drained':
      return { type: 'drained', drained: count(o, 'drained'), cut: count(o, 'cut') };
    default:
      throw new HandoverProtocolError(`unknown handover message type ${JSON.stringify(o.type)}`);
  }
}

export function encodeHandoverMessage(m: HandoverMessage): string {
  return `${JSON.stringify(m)}\n`;
}

/** How an agent starts, from the two locks it tried (without waiting). Pure. */
export type StartPlan = 'fresh' | 'take-over' | 'refuse';

export function startPlan(locks: { handover: boolean; agent: boolean }): StartPlan {
  if (!locks.handover) return 'refuse';
  return locks.agent ? 'fresh' : 'take-over';
}

/** Why a predecessor refuses a `begin` (undefined: it accepts). Pure. */
export function refusalReason(state: { ready: boolean; handingOver: boolean; stopping: boolean }): string | undefined {
  if (state.stopping) return 'the running agent is stopping';
  if (state.handingOver) return 'the running agent is already handing over to another agent';
  if (!state.ready) return 'the running agent is not ready yet (still starting); try again once it is';
  return undefined;
}

/** What a drain counted: connections open when it began, those that ended by themselves, those cut at the deadline. */
export interface DrainTally {
  atStart: number;
  drained: number;
  cut: number;
}

/**
 * The drain's state after one look at the open connections: finished when none is left or the deadline passed (the rest
 * is then cut). Connections opened during the drain (streams already on their way when GOAWAY went out) count too. Pure.
 */
export function drainTally(atStart: number, openedSince: number, left: number, deadlinePassed: boolean): { finished: boolean; tally: DrainTally } {
  const finished = left === 0 || deadlinePassed;
  const cut = finished ? left : 0;
  return { finished, tally: { atStart, drained: Math.max(0, atStart + openedSince - left), cut } };
}

// ---- Relay hand-over (plain TCP relays move to the successor instead of draining) ----
// After `ready` (with `relays: 1`) the predecessor connects to the successor's relay inbox, a SOCK_SEQPACKET socket in
// the state dir, and per batch: `relays` (two descriptors per relay attached, down then up) -> `ack` (the indexes the
// successor can take) -> `commit`; the successor starts a relay only on `commit`, the predecessor closes its copies only
// after sending it. Anything else (a timeout, an error, the successor gone) leaves a batch with the predecessor, where it drains.

/** The relay hand-over version this agent speaks (in `ready.relays` and every relay message's `v`). */
export const RELAY_HANDOVER_VERSION = 1;

/**
 * A random name for what one agent creates beside another's (its relay inbox, its staging socket): PIDs cannot tell two
 * agents apart (each pod has its own PID namespace, where both agents are often PID 1).
 */
export function newHandoverToken(): string {
  return randomBytes(8).toString('hex');
}

/** True for a token newHandoverToken() could have made (and a peer's, up to 64 hex digits). Pure. */
export function isHandoverToken(v: unknown): v is string {
  return typeof v === 'string' && /^[0-9a-f]{16,64}$/.test(v);
}

/** The successor's relay inbox: in the state dir (root only), named by the token it sends in `ready`. Pure. */
export function relayInboxPath(stateDir: string, token: string): string {
  if (!isHandoverToken(token)) throw new HandoverProtocolError(`relay inbox token ${JSON.stringify(token)} is not 16 to 64 hex digits`);
  return `${stateDir.replace(/\/+$/, '')}/relays.${token}.sock`;
}

/**
 * True for a file name relayInboxPath or listenerInboxPath (listener-protocol.ts) makes (or an older agent's relay
 * inbox, named by its pid): what an agent opening an inbox removes as left by an agent that died. Pure.
 */
export function isInboxName(name: string): boolean {
  return /^(relays|listeners)\.[0-9a-f]+\.sock$/.test(name);
}

/** Bounds of one relay hand-over; every wait on the other agent is one of these. */
export interface RelayLimits {
  /** Relays per message (two descriptors each; the kernel allows 253 per message). */
  perMessage: number;
  /** Bytes of one message's JSON. */
  maxMessageBytes: number;
  /** Relays moved in one take-over at most; the rest drain in the predecessor. */
  total: number;
  /** How long a paused batch may take to write what it had already read (else it is resumed and drains here). */
  flushMs: number;
  /** How long the predecessor waits for the successor's `ack` of a batch. */
  ackMs: number;
  /** How long the successor holds a batch it acked; without a `commit` by then it closes its copies. */
  commitMs: number;
  /** How long the successor's inbox waits for the predecessor to connect, and for each next message. */
  idleMs: number;
  /** The whole transfer, on the predecessor's side. */
  totalMs: number;
}

export const RELAY_LIMITS: RelayLimits = {
  perMessage: 16, maxMessageBytes: 64 * 1024, total: 4096, flushMs: 2000, ackMs: 5000, commitMs: 15_000, idleMs: 30_000, totalMs: 60_000,
};

/** One end of a moved relay as the access log names it. */
export interface RelayEndpoint {
  addr: string;
  workload?: string;
  namespace?: string;
  principal?: string;
}

/** What the successor needs to carry on a relay: its pod, ends, start, bytes so far and what policy decided on. */
export interface RelayMeta {
  /** The pod's attachment key (the same in both agents: from the state dir's records). */
  pod: string;
  direction: 'outbound' | 'inbound';
  src: RelayEndpoint;
  dst: RelayEndpoint;
  service?: { namespace: string; name: string; hostname: string };
  serviceAddr?: string;
  /** Epoch milliseconds, from the predecessor. */
  startedAt: number;
  /** Bytes src -> dst and dst -> src relayed by the predecessor (all of them written before the move). */
  bytesSent: number;
  bytesRecv: number;
  /** Plaintext inbound: the admitted source and destination, re-evaluated by the successor when policies change. */
  policy?: { source: { ip: string; principal?: string; namespace?: string }; destination: { ip: string; port: number } };
}

export type RelayMessage =
  | { v: number; type: 'relays'; batch: number; relays: RelayMeta[] }
  | { v: number; type: 'ack'; batch: number; accepted: number[] }
  | { v: number; type: 'commit'; batch: number }
  | { v: number; type: 'done'; moved: number; kept: number };

const MAX_ADDR = 64;
const MAX_NAME = 253;
const MAX_TEXT = 1024;

function str(o: Record<string, unknown>, key: string, max: number, optional: true): string | undefined;
function str(o: Record<string, unknown>, key: string, max: number, optional?: false): string;
function str(o: Record<string, unknown>, key: string, max: number, optional = false): string | undefined {
  const v = o[key];
  if (v === undefined && optional) return undefined;
  if (typeof v !== 'string' || v.length === 0 || v.length > max) throw new HandoverProtocolError(`relay field "${key}" must be a string of 1 to ${max} characters`);
  return v;
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new HandoverProtocolError(`relay field "${what}" must be an object`);
  return v as Record<string, unknown>;
}

function endpoint(v: unknown, what: string): RelayEndpoint {
  const o = obj(v, what);
  const e: RelayEndpoint = { addr: str(o, 'addr', MAX_ADDR) };
  const workload = str(o, 'workload', MAX_NAME, true);
  const namespace = str(o, 'namespace', MAX_NAME, true);
  const principal = str(o, 'principal', MAX_TEXT, true);
  return { ...e, ...(workload ? { workload } : {}), ...(namespace ? { namespace } : {}), ...(principal ? { principal } : {}) };
}

function port(o: Record<string, unknown>, key: string): number {
  const p = count(o, key);
  if (p < 1 || p > 65535) throw new HandoverProtocolError(`relay field "${key}" must be a port`);
  return p;
}

/** Validates one relay's description (untrusted input: every field typed and bounded). Pure. */
export function parseRelayMeta(v: unknown): RelayMeta {
  const o = obj(v, 'relay');
  const direction = o.direction;
  if (direction !== 'outbound' && direction !== 'inbound') throw new HandoverProtocolError('relay field "direction" must be "outbound" or "inbound"');
  const m: RelayMeta = {
    pod: str(o, 'pod', 512), direction, src: endpoint(o.src, 'src'), dst: endpoint(o.dst, 'dst'),
    startedAt: count(o, 'startedAt'), bytesSent: count(o, 'bytesSent'), bytesRecv: count(o, 'bytesRecv'),
  };
  if (o.service !== undefined) {
    const s = obj(o.service, 'service');
    m.service = { namespace: str(s, 'namespace', MAX_NAME), name: str(s, 'name', MAX_NAME), hostname: str(s, 'hostname', MAX_TEXT) };
  }
  const serviceAddr = str(o, 'serviceAddr', MAX_ADDR, true);
  if (serviceAddr) m.serviceAddr = serviceAddr;
  if (o.policy !== undefined) {
    const p = obj(o.policy, 'policy');
    const src = obj(p.source, 'policy.source');
    const dst = obj(p.destination, 'policy.destination');
    const principal = str(src, 'principal', MAX_TEXT, true);
    const namespace = str(src, 'namespace', MAX_NAME, true);
    m.policy = {
      source: { ip: str(src, 'ip', MAX_ADDR), ...(principal ? { principal } : {}), ...(namespace ? { namespace } : {}) },
      destination: { ip: str(dst, 'ip', MAX_ADDR), port: port(dst, 'port') },
    };
  }
  return m;
}

/**
 * Parses one relay message and checks it against the descriptors that came with it: a `relays` message carries two
 * per relay and at most `limits.perMessage` relays; the others carry none. Throws HandoverProtocolError otherwise. Pure.
 */
export function parseRelayMessage(data: Buffer, fdCount: number, limits: Pick<RelayLimits, 'perMessage' | 'maxMessageBytes'> = RELAY_LIMITS): RelayMessage {
  if (data.length > limits.maxMessageBytes) throw new HandoverProtocolError(`relay message over ${limits.maxMessageBytes} bytes`);
  let v: unknown;
  try {
    v = JSON.parse(data.toString('utf8'));
  } catch {
    throw new HandoverProtocolError('relay message is not JSON');
  }
  const o = obj(v, 'message');
  if (o.v !== RELAY_HANDOVER_VERSION) throw new HandoverProtocolError(`relay message version ${JSON.stringify(o.v)} is not ${RELAY_HANDOVER_VERSION}`);
  const noFds = (): void => {
    if (fdCount !== 0) throw new HandoverProtocolError(`a "${String(o.type)}" message carries no descriptors (got ${fdCount})`);
  };
  switch (o.type) {
    case 'relays': {
      if (!Array.isArray(o.relays) || o.relays.length === 0 || o.relays.length > limits.perMessage) {
        throw new HandoverProtocolError(`relay field "relays" must list 1 to ${limits.perMessage} relays`);
      }
      if (fdCount !== 2 * o.relays.length) throw new HandoverProtocolError(`${o.relays.length} relays need ${2 * o.relays.length} descriptors (got ${fdCount})`);
      return { v: RELAY_HANDOVER_VERSION, type: 'relays', batch: count(o, 'batch'), relays: o.relays.map(parseRelayMeta) };
    }
    case 'ack': {
      noFds();
      const a = o.accepted;
      if (!Array.isArray(a) || a.length > limits.perMessage || a.some((i) => !Number.isInteger(i) || (i as number) < 0 || (i as number) >= limits.perMessage) || new Set(a).size !== a.length) {
        throw new HandoverProtocolError('relay field "accepted" must list distinct relay indexes of the batch');
      }
      return { v: RELAY_HANDOVER_VERSION, type: 'ack', batch: count(o, 'batch'), accepted: a as number[] };
    }
    case 'commit':
      noFds();
      return { v: RELAY_HANDOVER_VERSION, type: 'commit', batch: count(o, 'batch') };
    case 'done':
      noFds();
      return { v: RELAY_HANDOVER_VERSION, type: 'done', moved: count(o, 'moved'), kept: count(o, 'kept') };
    default:
      throw new HandoverProtocolError(`unknown relay message type ${JSON.stringify(o.type)}`);
  }
}

export function encodeRelayMessage(m: RelayMessage): Buffer {
  return Buffer.from(JSON.stringify(m), 'utf8');
}

/** Splits the relays to move into batches of `perMessage`, at most `total` in all; the rest stay. Pure. */
export function relayBatches<T>(items: readonly T[], limits: Pick<RelayLimits, 'perMessage' | 'total'>): { batches: T[][]; over: T[] } {
  const movable = items.slice(0, limits.total);
  const batches: T[][] = [];
  for (let i = 0; i < movable.length; i += limits.perMessage) batches.push(movable.slice(i, i + limits.perMessage));
  return { batches, over: items.slice(limits.total) };
}

/** What a relay hand-over did: relays moved to the successor, kept (to drain here), and why some were kept. */
export interface RelayMoveTally {
  moved: number;
  kept: number;
  reasons: Record<string, number>;
}
