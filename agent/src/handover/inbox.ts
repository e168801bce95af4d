// What both inboxes of a take-over share (relays: relay-transfer.ts, listeners: listener-transfer.ts): the root-only
// SOCK_SEQPACKET socket in the state dir, its one peer's check, and receiving one bounded, parsed message.
import { readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { POLLIN, SOCK_CLOEXEC, SOCK_NONBLOCK, accept, close } from '../platform/libc.js';
import { closeAll, listenUnixSeqpacket, peerCredentials, pollUntil, receiveMessage } from '../platform/fd-passing.js';
import { HandoverProtocolError, isInboxName } from './protocol.js';

/**
 * The other end of an inbox socket must run as this agent's user: the inbox lives in the root-only state dir, so that
 * and its random name (sent over the event socket's take-over channel) are what identify the peer. PIDs are only logged:
 * the agents are in different PID namespaces (SO_PEERCRED reports a peer outside ours as pid 0).
 */
export function checkPeer(fd: number): { pid: number; uid: number } {
  const peer = peerCredentials(fd);
  if (peer.uid !== (process.getuid?.() ?? 0)) throw new HandoverProtocolError(`the other end of the hand-over socket runs as uid ${peer.uid}, not as this agent's user`);
  return peer;
}

/**
 * Receives one message by `deadline` and parses it with its descriptors' count; throws when the peer closed, sent
 * nothing or something malformed (its descriptors closed then).
 */
export async function receiveParsed<T>(
  fd: number, limits: { maxMessageBytes: number }, maxFds: number, deadline: number, what: string, parse: (data: Buffer, fdCount: number) => T,
): Promise<{ msg: T; fds: number[] }> {
  const r = await receiveMessage(fd, limits.maxMessageBytes, maxFds, deadline);
  if (r === undefined) throw new HandoverProtocolError(`no ${what} from the other agent in time`);
  if (r.closed) throw new HandoverProtocolError(`the other agent closed the hand-over socket before its ${what}`);
  try {
    if (r.problem) throw new HandoverProtocolError(r.problem);
    return { msg: parse(r.data, r.fds.length), fds: r.fds };
  } catch (err) {
    closeAll(r.fds);
    throw err;
  }
}

/**
 * A listening inbox socket at `path` (one connection: the other agent's). Opening it removes every other inbox beside
 * it, left by agents that died (a successor killed mid-take-over): the caller holds handover.lock, so no other agent can
 * be waiting on an inbox of its own. cancel() ends a pending accept (within one poll).
 */
export class InboxSocket {
  private listenFd: number | undefined;
  private cancelled = false;

  constructor(private readonly path: string) {
    const dir = dirname(path);
    for (const name of readdirSync(dir)) {
      if (isInboxName(name) && join(dir, name) !== path) rmSync(join(dir, name), { force: true });
    }
    this.listenFd = listenUnixSeqpacket(path);
  }

  /** The one connection, by `deadline`; undefined when none came, or the inbox was cancelled or closed first. */
  async accept(deadline: number): Promise<number | undefined> {
    const fd = this.listenFd;
    if (fd === undefined) return undefined;
    const got = await pollUntil(() => (this.cancelled ? null : accept(fd, SOCK_NONBLOCK | SOCK_CLOEXEC)), deadline, fd, POLLIN);
    return got ?? undefined;
  }

  /** Ends a pending accept(): the serving side then closes the socket. */
  cancel(): void {
    this.cancelled = true;
  }

  /** Stops listening and removes the socket file. Idempotent. */
  close(): void {
    if (this.listenFd === undefined) return;
    close(this.listenFd);
    this.listenFd = undefined;
    rmSync(this.path, { force: true });
  }
}
