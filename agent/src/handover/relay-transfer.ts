// Moving plain TCP relays from a predecessor to its successor during a take-over: the predecessor's sender
// (sendRelays) and the successor's inbox (RelayInbox), over a SOCK_SEQPACKET socket with SCM_RIGHTS (protocol.ts).
import { AF_INET, AF_INET6, SOCK_STREAM, close } from '../platform/libc.js';
import { closeAll, connectUnixSeqpacket, sendMessage, socketKind } from '../platform/fd-passing.js';
import { describe } from '../errors.js';
import type { Logger } from '../log.js';
import type { MovableRelay } from '../forwarder/pod-forwarder.js';
import type { PausedRelay } from '../forwarder/relay-pause.js';
import {
  HandoverProtocolError, RELAY_HANDOVER_VERSION, encodeRelayMessage, parseRelayMessage, relayBatches,
  type RelayLimits, type RelayMessage, type RelayMeta, type RelayMoveTally,
} from './protocol.js';
import { InboxSocket, checkPeer, receiveParsed } from './inbox.js';

/** A relay the predecessor offers, with its pod's key. */
export interface OutgoingRelay {
  pod: string;
  relay: MovableRelay;
}

/** Receives one relay message by `deadline`; throws when the peer closed, sent nothing or sent something malformed. */
function expect(fd: number, limits: RelayLimits, maxFds: number, deadline: number, what: string): Promise<{ msg: RelayMessage; fds: number[] }> {
  return receiveParsed(fd, limits, maxFds, deadline, what, (data, n) => parseRelayMessage(data, n, limits));
}

function keep(tally: RelayMoveTally, n: number, reason: string): void {
  if (n <= 0) return;
  tally.kept += n;
  tally.reasons[reason] = (tally.reasons[reason] ?? 0) + n;
}

/**
 * The predecessor's side: hands `relays` to the successor whose inbox is at `path`, batch by batch. A batch is paused
 * and flushed here, sent, acknowledged, committed; only then are this agent's descriptors closed. Whatever cannot move
 * (half-closed, writes pending past the flush bound, over the cap, refused, or any failure of the other side) is
 * resumed and drains here. With no relays it still connects and says `done`, so the inbox closes at once. Never throws.
 */
export async function sendRelays(path: string, relays: OutgoingRelay[], limits: RelayLimits, log: Logger): Promise<RelayMoveTally> {
  const tally: RelayMoveTally = { moved: 0, kept: 0, reasons: {} };
  const deadline = Date.now() + limits.totalMs;
  let fd: number;
  try {
    fd = await connectUnixSeqpacket(path, Date.now() + limits.ackMs);
  } catch (err) {
    log.warn({ error: describe(err), path }, 'cannot reach the successor\'s relay inbox; relays drain here');
    keep(tally, relays.length, 'no relay inbox');
    return tally;
  }
  try {
    const peer = checkPeer(fd);
    log.debug({ peerPid: peer.pid, path }, 'connected to the successor\'s relay inbox');
  } catch (err) {
    close(fd);
    log.warn({ error: describe(err), path }, 'relay inbox refused; relays drain here');
    keep(tally, relays.length, 'relay inbox refused');
    return tally;
  }
  const { batches, over } = relayBatches(relays, limits);
  keep(tally, over.length, 'over the cap');
  let broken: string | undefined;
  for (let b = 0; b < batches.length; b++) {
    const batch = batches[b]!;
    if (broken || Date.now() >= deadline) {
      keep(tally, batch.length, broken ? 'transfer failed' : 'transfer deadline');
      continue;
    }
    broken = await moveBatch(fd, b, batch, limits, tally, log);
  }
  if (!broken) await sendMessage(fd, encodeRelayMessage({ v: RELAY_HANDOVER_VERSION, type: 'done', moved: tally.moved, kept: tally.kept }), [], Date.now() + limits.ackMs).catch(() => undefined);
  close(fd);
  return tally;
}

/** One batch: pause, flush, send, ack, commit. Returns why the channel is unusable, or undefined to go on. */
async function moveBatch(fd: number, b: number, batch: OutgoingRelay[], limits: RelayLimits, tally: RelayMoveTally, log: Logger): Promise<string | undefined> {
  const paused: { out: OutgoingRelay; p: PausedRelay }[] = [];
  for (const out of batch) {
    const p = out.relay.pause();
    if (p) paused.push({ out, p });
    else keep(tally, 1, 'closing or half-closed');
  }
  const flushed = await Promise.all(paused.map((x) => x.p.flushed(limits.flushMs)));
  const ready: { out: OutgoingRelay; p: PausedRelay; fds: [number, number]; meta: RelayMeta }[] = [];
  paused.forEach((x, i) => {
    const fds = flushed[i] ? x.p.fds() : undefined;
    if (fds) ready.push({ ...x, fds, meta: { pod: x.out.pod, ...x.out.relay.describe() } });
    else {
      x.p.resume();
      keep(tally, 1, 'writes still pending');
    }
  });
  if (ready.length === 0) return undefined;
  const resumeAll = (reason: string, which = ready): void => {
    for (const r of which) r.p.resume();
    keep(tally, which.length, reason);
  };
  const data = encodeRelayMessage({ v: RELAY_HANDOVER_VERSION, type: 'relays', batch: b, relays: ready.map((r) => r.meta) });
  if (data.length > limits.maxMessageBytes) {
    resumeAll('description too large');
    return undefined;
  }
  let accepted: Set<number>;
  try {
    await sendMessage(fd, data, ready.flatMap((r) => r.fds), Date.now() + limits.ackMs);
    const { msg } = await expect(fd, limits, 0, Date.now() + limits.ackMs, 'ack');
    if (msg.type !== 'ack' || msg.batch !== b) throw new HandoverProtocolError(`expected the ack of batch ${b}, got ${msg.type}`);
    accepted = new Set(msg.accepted.filter((i) => i < ready.length));
    if (accepted.size > 0) await sendMessage(fd, encodeRelayMessage({ v: RELAY_HANDOVER_VERSION, type: 'commit', batch: b }), [], Date.now() + limits.ackMs);
  } catch (err) {
    // Not committed: the successor closes its copies without starting them; this agent carries on with its own.
    log.warn({ error: describe(err), batch: b, relays: ready.length }, 'relay hand-over failed; these relays drain here');
    resumeAll('successor failed');
    return describe(err);
  }
  ready.forEach((r, i) => {
    if (accepted.has(i)) {
      r.out.relay.handedOver();
      tally.moved++;
    } else resumeAll('refused by the successor', [r]);
  });
  return undefined;
}

/** What the successor's inbox did. */
export interface InboxTally {
  received: number;
  adopted: number;
  /** Refused (unknown pod, not a TCP socket) or dropped (no commit): closed here, left with the predecessor. */
  refused: number;
}

/** The successor's hooks: can a relay's pod take it, and carry it on (after the commit). */
export interface InboxHooks {
  canAdopt(meta: RelayMeta): boolean;
  adopt(meta: RelayMeta, downFd: number, upFd: number): void;
}

/**
 * The successor's relay inbox: a root-only SOCK_SEQPACKET socket in the state dir, at a random name the successor sends
 * in `ready`, that takes one connection (from this agent's user: checkPeer) and the relays it hands over. Open before
 * `ready` is sent.
 */
export class RelayInbox {
  private constructor(private readonly socket: InboxSocket) {}

  /** Opens the inbox at `path` (removing inboxes left by agents that died: see InboxSocket). */
  static open(path: string): RelayInbox {
    return new RelayInbox(new InboxSocket(path));
  }

  /** Stops listening and removes the socket file. Idempotent. */
  close(): void {
    this.socket.close();
  }

  /**
   * Waits for the predecessor and takes its relays until it says `done`, closes the socket, or a bound passes. Never
   * throws; always closes the inbox. `ackDelayMs`: a test knob (a successor that stalls between receiving a batch and
   * acknowledging it).
   */
  async serve(hooks: InboxHooks, limits: RelayLimits, log: Logger, ackDelayMs = 0): Promise<InboxTally> {
    const tally: InboxTally = { received: 0, adopted: 0, refused: 0 };
    let fd: number | undefined;
    try {
      fd = await this.socket.accept(Date.now() + limits.idleMs);
      this.close();
      if (fd === undefined) {
        log.info('no predecessor connected to the relay inbox; it moves no relays');
        return tally;
      }
      const peer = checkPeer(fd);
      log.debug({ peerPid: peer.pid }, 'the predecessor connected to the relay inbox');
      for (;;) {
        const { msg, fds } = await expect(fd, limits, 2 * limits.perMessage, Date.now() + limits.idleMs, 'relays');
        if (msg.type === 'done') break;
        if (msg.type !== 'relays') {
          closeAll(fds);
          throw new HandoverProtocolError(`expected relays, got ${msg.type}`);
        }
        await this.batch(fd, msg.batch, msg.relays, fds, hooks, limits, tally, log, ackDelayMs);
      }
    } catch (err) {
      log.warn({ error: describe(err), ...tally }, 'relay inbox ended');
    } finally {
      this.close();
      if (fd !== undefined) close(fd);
    }
    return tally;
  }

  private async batch(fd: number, b: number, relays: RelayMeta[], fds: number[], hooks: InboxHooks, limits: RelayLimits, tally: InboxTally, log: Logger, ackDelayMs: number): Promise<void> {
    tally.received += relays.length;
    const accepted: number[] = [];
    relays.forEach((meta, i) => {
      const pair = [fds[2 * i]!, fds[2 * i + 1]!];
      let ok = false;
      try {
        ok = pair.every((f) => {
          const k = socketKind(f);
          return (k.domain === AF_INET || k.domain === AF_INET6) && k.type === SOCK_STREAM;
        }) && hooks.canAdopt(meta);
      } catch {
        ok = false;
      }
      if (ok) accepted.push(i);
      else {
        closeAll(pair); // close only: the predecessor keeps the connection
        tally.refused++;
      }
    });
    const held = (): number[] => accepted.flatMap((i) => [fds[2 * i]!, fds[2 * i + 1]!]);
    try {
      log.info({ batch: b, relays: relays.length, accepted: accepted.length }, 'relay batch received');
      if (ackDelayMs > 0) await new Promise((r) => setTimeout(r, ackDelayMs));
      await sendMessage(fd, encodeRelayMessage({ v: RELAY_HANDOVER_VERSION, type: 'ack', batch: b, accepted }), [], Date.now() + limits.ackMs);
      if (accepted.length === 0) return;
      const { msg } = await expect(fd, limits, 0, Date.now() + limits.commitMs, 'commit');
      if (msg.type !== 'commit' || msg.batch !== b) throw new HandoverProtocolError(`expected the commit of batch ${b}, got ${msg.type}`);
    } catch (err) {
      // No commit: the predecessor still has these relays. Ours are closed (not shut down), never started.
      closeAll(held());
      tally.refused += accepted.length;
      throw err;
    }
    for (const i of accepted) {
      const meta = relays[i]!;
      try {
        hooks.adopt(meta, fds[2 * i]!, fds[2 * i + 1]!);
        tally.adopted++;
      } catch (err) {
        log.error({ error: describe(err), pod: meta.pod, src: meta.src.addr, dst: meta.dst.addr }, 'a relay handed over could not be carried on; cut');
      }
    }
  }
}
