// The take-over protocol between a running agent (the predecessor) and a new one on the same state dir (the
// successor): its messages and their parsing, and the pure decisions around it (who starts how, what a drain counted).
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
 * successor `begin` -> predecessor `released` (it has stopped changing anything and let go of agent.lock) or `refused`;
 * successor `ready` (it owns the socket path and the pods' listeners) -> predecessor `draining`, later `drained`, exit.
 * If the successor's connection ends before `ready`, the predecessor takes agent.lock back and carries on.
 */
export type HandoverMessage =
  | { type: 'begin'; pid: number }
  | { type: 'released' }
  | { type: 'refused'; reason: string }
  | { type: 'ready'; pid: number }
  | { type: 'draining'; connections: number; deadlineSeconds: number }
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
    case 'ready':
      return { type: o.type, pid: count(o, 'pid') };
    case 'released':
      return { type: 'released' };
    case 'refused':
      if (typeof o.reason !== 'string') throw new HandoverProtocolError('handover message field "reason" must be a string');
      return { type: 'refused', reason: o.reason };
    case 'draining':
      return { type: 'draining', connections: count(o, 'connections'), deadlineSeconds: count(o, 'deadlineSeconds') };
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
