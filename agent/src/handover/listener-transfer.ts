// Moving the pods' listening sockets from a predecessor to its successor during a take-over (listener-protocol.ts):
// the predecessor's sender (sendListeners) and the successor's inbox (ListenerInbox), over SOCK_SEQPACKET + SCM_RIGHTS.
import { close } from '../platform/libc.js';
import { closeAll, connectUnixSeqpacket, sendMessage } from '../platform/fd-passing.js';
import { describe } from '../errors.js';
import type { Logger } from '../log.js';
import { HandoverProtocolError, relayBatches } from './protocol.js';
import {
  LISTENER_HANDOVER_VERSION, encodeListenerMessage, parseListenerMessage,
  type HandedListeners, type ListenerInboxTally, type ListenerLimits, type ListenerMessage, type ListenerMeta,
} from './listener-protocol.js';
import { InboxSocket, checkPeer, receiveParsed } from './inbox.js';

/** A listener the predecessor hands over: its pod, kind and this agent's fd (which it keeps: the kernel sends a copy). */
export interface OutgoingListener extends ListenerMeta {
  fd: number;
}

/** What the predecessor's transfer did: listeners sent, taken by the successor, and why it stopped early. */
export interface ListenerSendTally {
  sent: number;
  accepted: number;
  problem?: string;
}

function expect(fd: number, limits: ListenerLimits, maxFds: number, deadline: number, what: string): Promise<{ msg: ListenerMessage; fds: number[] }> {
  return receiveParsed(fd, limits, maxFds, deadline, what, (data, n) => parseListenerMessage(data, n, limits));
}

/**
 * The predecessor's side: sends every listener to the successor's inbox at `path`, batch by batch, each acknowledged,
 * then `done`. This agent's descriptors stay open and accepting (it closes them at the hand-off after `ready`). Never
 * throws: `problem` says why the successor may not have them all (the caller then refuses the take-over).
 */
export async function sendListeners(path: string, listeners: OutgoingListener[], limits: ListenerLimits, log: Logger): Promise<ListenerSendTally> {
  const tally: ListenerSendTally = { sent: 0, accepted: 0 };
  const { batches, over } = relayBatches(listeners, limits);
  if (over.length > 0) return { ...tally, problem: `${listeners.length} listeners to hand over, over the cap of ${limits.total}` };
  const deadline = Date.now() + limits.totalMs;
  let fd: number;
  try {
    fd = await connectUnixSeqpacket(path, Date.now() + limits.ackMs);
  } catch (err) {
    return { ...tally, problem: `cannot reach the successor's listener inbox: ${describe(err)}` };
  }
  try {
    const peer = checkPeer(fd);
    log.debug({ peerPid: peer.pid, path }, 'connected to the successor\'s listener inbox');
    for (let b = 0; b < batches.length; b++) {
      if (Date.now() >= deadline) throw new HandoverProtocolError(`the listener hand-over took over ${limits.totalMs} ms`);
      const batch = batches[b]!;
      const data = encodeListenerMessage({ v: LISTENER_HANDOVER_VERSION, type: 'listeners', batch: b, listeners: batch.map(({ pod, kind }) => ({ pod, kind })) });
      await sendMessage(fd, data, batch.map((l) => l.fd), Math.min(deadline, Date.now() + limits.ackMs));
      tally.sent += batch.length;
      const { msg } = await expect(fd, limits, 0, Math.min(deadline, Date.now() + limits.ackMs), 'ack');
      if (msg.type !== 'ack' || msg.batch !== b) throw new HandoverProtocolError(`expected the ack of listener batch ${b}, got ${msg.type}`);
      tally.accepted += msg.accepted.filter((i) => i < batch.length).length;
    }
    await sendMessage(fd, encodeListenerMessage({ v: LISTENER_HANDOVER_VERSION, type: 'done', sent: tally.sent }), [], Math.min(deadline, Date.now() + limits.ackMs));
  } catch (err) {
    tally.problem = describe(err);
  } finally {
    close(fd);
  }
  if (!tally.problem && tally.accepted < tally.sent) tally.problem = `the successor refused ${tally.sent - tally.accepted} of ${tally.sent} listeners`;
  return tally;
}

/** What the inbox kept: each pod's listeners by kind (the caller owns the fds: adopt them, or closeHanded()). */
export type HandedByPod = Map<string, HandedListeners>;

/** Closes every descriptor of a HandedByPod and empties it; returns how many it closed. */
export function closeHanded(handed: HandedByPod): number {
  let n = 0;
  for (const h of handed.values()) {
    const fds = Object.values(h);
    closeAll(fds);
    n += fds.length;
  }
  handed.clear();
  return n;
}

/**
 * The successor's listener inbox: a root-only SOCK_SEQPACKET socket in the state dir at a random name sent in `begin`,
 * open before it. Takes one connection (from this agent's user) and the listeners it hands over, each checked by
 * `check` (why it must not be used, or undefined) before it is kept; a refused one is closed at once.
 */
export class ListenerInbox {
  private constructor(private readonly socket: InboxSocket) {}

  static open(path: string): ListenerInbox {
    return new ListenerInbox(new InboxSocket(path));
  }

  /** Ends serve() if the predecessor has not connected (an older one never does). */
  cancel(): void {
    this.socket.cancel();
  }

  /**
   * Waits for the predecessor and takes its listeners until `done`, a close, or a bound passes. Never throws; always
   * closes the inbox. On any problem every descriptor kept so far is closed too: the take-over fails, nothing is half used.
   */
  async serve(check: (meta: ListenerMeta, fd: number) => string | undefined, limits: ListenerLimits, log: Logger): Promise<{ tally: ListenerInboxTally; handed: HandedByPod }> {
    const tally: ListenerInboxTally = { received: 0, accepted: 0, refused: 0 };
    const handed: HandedByPod = new Map();
    let fd: number | undefined;
    // The receiving side's own bounds, not only the sender's: the whole transfer by totalMs, at most `total` listeners.
    const end = Date.now() + limits.totalMs;
    try {
      fd = await this.socket.accept(Math.min(end, Date.now() + limits.idleMs));
      this.socket.close();
      if (fd === undefined) {
        tally.problem = 'the running agent did not connect to the listener inbox';
        return { tally, handed };
      }
      const peer = checkPeer(fd);
      log.debug({ peerPid: peer.pid }, 'the predecessor connected to the listener inbox');
      for (;;) {
        const { msg, fds } = await expect(fd, limits, limits.perMessage, Math.min(end, Date.now() + limits.idleMs), 'listeners');
        if (msg.type === 'done') {
          tally.done = { sent: msg.sent };
          break;
        }
        if (msg.type !== 'listeners') {
          closeAll(fds);
          throw new HandoverProtocolError(`expected listeners, got ${msg.type}`);
        }
        if (tally.received + msg.listeners.length > limits.total) {
          closeAll(fds);
          throw new HandoverProtocolError(`more than ${limits.total} listeners handed over`);
        }
        const accepted: number[] = [];
        msg.listeners.forEach((meta, i) => {
          const lfd = fds[i]!;
          tally.received++;
          let problem: string | undefined;
          try {
            problem = handed.get(meta.pod)?.[meta.kind] !== undefined ? 'a second listener of this kind for the pod' : check(meta, lfd);
          } catch (err) {
            problem = describe(err);
          }
          if (problem) {
            close(lfd);
            tally.refused++;
            log.warn({ pod: meta.pod, kind: meta.kind, problem }, 'a listener handed over failed its check; closed, never used');
            return;
          }
          handed.set(meta.pod, { ...handed.get(meta.pod), [meta.kind]: lfd });
          tally.accepted++;
          accepted.push(i);
        });
        await sendMessage(fd, encodeListenerMessage({ v: LISTENER_HANDOVER_VERSION, type: 'ack', batch: msg.batch, accepted }), [], Date.now() + limits.ackMs);
      }
    } catch (err) {
      tally.problem = describe(err);
    } finally {
      this.socket.close();
      if (fd !== undefined) close(fd);
    }
    if (tally.problem) closeHanded(handed);
    return { tally, handed };
  }
}
