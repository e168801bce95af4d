// Both ends of one take-over conversation over the event socket: the line channel, the successor's request
// (requestTakeOver) and the predecessor's side (servePredecessor), whose steps the agent supplies as hooks.
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { describe } from '../errors.js';
import type { Logger } from '../log.js';
import {
  HANDOVER_PATH, HANDOVER_PROTOCOL, HandoverProtocolError, RELAY_HANDOVER_VERSION, TakeOverError, encodeHandoverMessage, parseHandoverMessage,
  type DrainTally, type HandoverMessage, type RelayMoveTally,
} from './protocol.js';
import { LISTENER_HANDOVER_VERSION, listenerRefusal } from './listener-protocol.js';
import type { ListenerSendTally } from './listener-transfer.js';

/** No protocol line is longer than this; a peer sending more is not an agent. */
const MAX_LINE = 4096;
/** Messages received and not read yet: the protocol has at most a few in flight; a peer sending more is not an agent. */
const MAX_QUEUED = 16;

/** JSON lines over an upgraded connection: send(), and next() for the peer's next message (bounded in time). */
export class HandoverChannel {
  private buffered = '';
  private queue: HandoverMessage[] = [];
  private waiter: { resolve: (m: HandoverMessage) => void; reject: (e: Error) => void } | undefined;
  private ended: Error | undefined;
  /** Resolves when the connection ends, for whatever reason (the peer exited, was killed, or closed it). */
  readonly closed: Promise<void>;

  constructor(private readonly conn: Duplex, head: Buffer) {
    this.closed = new Promise((resolve) => conn.once('close', () => resolve()));
    conn.on('error', (err: Error) => this.fail(err));
    conn.on('close', () => this.fail(new TakeOverError('the other agent closed the take-over connection')));
    // The event server's sockets allow half-open: the peer's end (its exit, even kill -9) would not close ours.
    conn.on('end', () => {
      this.fail(new TakeOverError('the other agent ended the take-over connection'));
      conn.destroy();
    });
    conn.on('data', (d: Buffer) => this.feed(d));
    if (head.length) this.feed(head);
  }

  send(m: HandoverMessage): void {
    if (!this.ended) this.conn.write(encodeHandoverMessage(m));
  }

  /** The peer's next message; rejects when the connection ends first, on a protocol error, or after timeoutMs. */
  next(timeoutMs: number): Promise<HandoverMessage> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new TakeOverError(`the other agent sent nothing for ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        resolve: (m) => {
          clearTimeout(timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      };
    });
  }

  close(): void {
    this.conn.destroy();
  }

  /** True until the connection ended (the peer exited or closed it, a protocol error, or close()). */
  get open(): boolean {
    return this.ended === undefined;
  }

  /** Ends the connection after what was sent has been flushed. */
  end(): void {
    this.conn.end();
  }

  private feed(d: Buffer): void {
    this.buffered += d.toString('utf8');
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl);
      this.buffered = this.buffered.slice(nl + 1);
      let m: HandoverMessage;
      try {
        m = parseHandoverMessage(line);
      } catch (err) {
        this.fail(err as Error);
        this.conn.destroy();
        return;
      }
      const w = this.waiter;
      this.waiter = undefined;
      if (w) w.resolve(m);
      else if (this.queue.length < MAX_QUEUED) this.queue.push(m);
      else {
        this.fail(new HandoverProtocolError(`over ${MAX_QUEUED} take-over messages unread`));
        this.conn.destroy();
        return;
      }
    }
    if (this.buffered.length > MAX_LINE) {
      this.fail(new HandoverProtocolError(`handover line over ${MAX_LINE} bytes`));
      this.conn.destroy();
    }
  }

  private fail(err: Error): void {
    this.ended ??= err;
    const w = this.waiter;
    this.waiter = undefined;
    w?.reject(this.ended);
  }
}

/** The running agent's `released`: it has let go of the state dir (and says whether it handed its listeners over). */
export type Released = Extract<HandoverMessage, { type: 'released' }>;

/**
 * The successor's first step: asks the agent at `socketPath` to hand over (`listenerInbox`: the token of the inbox this
 * agent takes the pods' listeners on, already open) and waits until it has released the state dir (`released`).
 * `answerMs` bounds the wait for the protocol upgrade, `releasedMs` the wait after it for `released` (the running agent's
 * freeze and, with an inbox, its whole listener transfer come first). Throws TakeOverError when it refuses, does not
 * speak the protocol, or does not answer in time.
 */
export function requestTakeOver(
  socketPath: string, timeouts: { answerMs: number; releasedMs: number }, listenerInbox?: string,
): Promise<{ channel: HandoverChannel; released: Released }> {
  const { answerMs, releasedMs } = timeouts;
  return new Promise((resolve, reject) => {
    const req = http.request({
      socketPath, path: HANDOVER_PATH, method: 'GET', timeout: answerMs,
      headers: { connection: 'upgrade', upgrade: HANDOVER_PROTOCOL },
    });
    req.on('timeout', () => req.destroy(new TakeOverError(`the running agent at ${socketPath} did not answer the take-over in ${answerMs} ms`)));
    req.on('error', (err) => reject(err instanceof TakeOverError ? err : new TakeOverError(
      `another agent holds the state dir, but its socket ${socketPath} does not answer (${err.message}): is it hung, or started with another --socket?`, { cause: err })));
    req.on('response', (res) => {
      res.resume();
      reject(new TakeOverError(`the running agent at ${socketPath} does not support take-over (HTTP ${res.statusCode ?? 0}): stop it first`));
    });
    req.on('upgrade', (_res, conn, head) => {
      req.setTimeout(0);
      const channel = new HandoverChannel(conn, head);
      channel.send({ type: 'begin', pid: process.pid, ...(listenerInbox ? { listeners: LISTENER_HANDOVER_VERSION, inbox: listenerInbox } : {}) });
      channel.next(releasedMs).then((m) => {
        if (m.type === 'released') return resolve({ channel, released: m });
        channel.close();
        reject(new TakeOverError(m.type === 'refused' ? `the running agent refused to hand over: ${m.reason}` : `unexpected take-over answer "${m.type}"`));
      }, (err: unknown) => {
        channel.close();
        reject(new TakeOverError(`the take-over did not start: ${describe(err)}`, { cause: err }));
      });
    });
    req.end();
  });
}

/** The predecessor's steps, supplied by the agent. */
export interface PredecessorHooks {
  /** Why a take-over is refused now; undefined to accept. */
  refusal(): string | undefined;
  /** Stops changing rules and records, waits for work in progress, releases agent.lock. */
  freeze(successorPid: number): Promise<void>;
  /**
   * Hands every pod's listening sockets to the successor's listener inbox (token from `begin`); this agent keeps its
   * copies (closed by handOff). A `problem` fails the take-over before `released`: this agent resumes.
   */
  moveListeners(inbox: string): Promise<ListenerSendTally>;
  /** The successor went away before it was ready: take agent.lock back and carry on as before. */
  resume(reason: string): Promise<void>;
  /** The successor is ready: forward held events, stop accepting; returns the open connections to drain. */
  handOff(): Promise<number>;
  /** Hands plain TCP relays to the successor's relay inbox (token from `ready`, of our version); what is kept drains. */
  moveRelays?(inbox: string): Promise<RelayMoveTally>;
  /** Waits for open connections to end, up to the deadline; cuts the rest. */
  drain(): Promise<DrainTally>;
  /** Everything is done: stop and exit (0). */
  finish(tally: DrainTally): void;
}

/** How long the first message may take. */
const BEGIN_TIMEOUT_MS = 10_000;
/**
 * How often the wait for `ready` is logged. A successor adopting many pods may take long: the predecessor waits while the
 * take-over connection is open (the kernel closes it when the successor dies, even by kill -9), however long that is.
 */
const READY_NOTICE_MS = 30_000;

/** Waits for the successor's `ready` while the connection is open; throws when it ends first or sends anything else. */
async function awaitReady(channel: HandoverChannel, log: Logger): Promise<Extract<HandoverMessage, { type: 'ready' }>> {
  const t0 = Date.now();
  for (;;) {
    let m: HandoverMessage;
    try {
      m = await channel.next(READY_NOTICE_MS);
    } catch (err) {
      if (!channel.open) throw err;
      log.warn({ waitedSeconds: Math.round((Date.now() - t0) / 1000) }, 'the successor is not ready yet (adopting pods); still waiting while it is connected');
      continue;
    }
    if (m.type !== 'ready') throw new HandoverProtocolError(`expected "ready", got "${m.type}"`);
    return m;
  }
}

/**
 * Runs the predecessor's side of one take-over on an upgraded connection. Never throws: failures are logged. A failure
 * before `ready` resumes this agent (the successor is told by the connection's end); after it, the hand-off finishes
 * (the successor owns the socket path by then) with whatever drained.
 */
export async function servePredecessor(conn: Duplex, head: Buffer, hooks: PredecessorHooks, drainSeconds: number, log: Logger): Promise<void> {
  const channel = new HandoverChannel(conn, head);
  let begin: HandoverMessage;
  try {
    begin = await channel.next(BEGIN_TIMEOUT_MS);
    if (begin.type !== 'begin') throw new HandoverProtocolError(`expected "begin", got "${begin.type}"`);
  } catch (err) {
    log.warn({ error: describe(err) }, 'take-over request malformed; ignored');
    channel.close();
    return;
  }
  const refusal = hooks.refusal() ?? listenerRefusal(begin);
  if (refusal) {
    log.warn({ successorPid: begin.pid, reason: refusal }, 'take-over refused');
    channel.send({ type: 'refused', reason: refusal });
    channel.close();
    return;
  }
  log.info({ successorPid: begin.pid }, 'handing over: no more rule or record changes here');
  let ready: Extract<HandoverMessage, { type: 'ready' }>;
  try {
    await hooks.freeze(begin.pid);
    // listenerRefusal: the successor named its inbox and our version.
    const t0 = process.hrtime.bigint();
    const listeners = await hooks.moveListeners(begin.inbox ?? '');
    if (listeners.problem) {
      log.warn({ ...listeners }, 'listener hand-over failed; the take-over is refused and this agent carries on');
      channel.send({ type: 'refused', reason: `the listener hand-over failed: ${listeners.problem}` });
      throw new TakeOverError(`the listener hand-over failed: ${listeners.problem}`);
    }
    log.info({ ...listeners, ms: Number(process.hrtime.bigint() - t0) / 1e6 }, 'listening sockets handed over to the successor (this agent accepts on them until it is ready)');
    channel.send({ type: 'released', listeners: LISTENER_HANDOVER_VERSION });
    ready = await awaitReady(channel, log);
  } catch (err) {
    channel.close();
    try {
      await hooks.resume(describe(err));
    } catch (e) {
      log.error({ error: describe(e) }, 'resuming after an abandoned take-over failed');
    }
    return;
  }
  let tally: DrainTally = { atStart: 0, drained: 0, cut: 0 };
  try {
    let connections = await hooks.handOff();
    let moved: number | undefined;
    if (ready.relays === RELAY_HANDOVER_VERSION && ready.inbox !== undefined && hooks.moveRelays) {
      const t0 = process.hrtime.bigint();
      const relays = await hooks.moveRelays(ready.inbox);
      moved = relays.moved;
      connections = Math.max(0, connections - relays.moved);
      log.info({ ...relays, ms: Number(process.hrtime.bigint() - t0) / 1e6 }, 'plain TCP relays handed over to the successor');
    }
    log.info({ successorPid: ready.pid, connections, moved, drainSeconds }, 'successor ready: listeners closed, draining');
    channel.send({ type: 'draining', connections, deadlineSeconds: drainSeconds, ...(moved !== undefined ? { moved } : {}) });
    tally = await hooks.drain();
    channel.send({ type: 'drained', drained: tally.drained, cut: tally.cut });
  } catch (err) {
    log.error({ error: describe(err) }, 'a step of the hand-off failed; finishing it (the successor serves the node)');
  }
  // Ended here, not by our exit: the event server's close waits for every connection, this one included.
  channel.end();
  hooks.finish(tally);
}
