// Passing file descriptors between two local processes: a non-blocking AF_UNIX SOCK_SEQPACKET socket (one message per
// send, never read by Node's event loop) with SCM_RIGHTS, and the pure encoding of the SCM_RIGHTS control message.
import { chmodSync, rmSync } from 'node:fs';
import {
  AF_UNIX, POLLIN, POLLOUT, pollAsync, MSG_CMSG_CLOEXEC, MSG_CTRUNC, MSG_DONTWAIT, MSG_NOSIGNAL, MSG_TRUNC, SCM_RIGHTS, SOCK_CLOEXEC, SOCK_NONBLOCK,
  SOCK_SEQPACKET, SOL_SOCKET, SO_DOMAIN, SO_PEERCRED, SO_TYPE, bind, close, connect, getsockoptBuf, listen,
  recvmsg, sendmsg, sockaddrUn, socket,
} from './libc.js';

/** sizeof(struct cmsghdr) on 64-bit Linux: size_t cmsg_len, int cmsg_level, int cmsg_type. */
const CMSG_HDR = 16;
const align8 = (n: number): number => (n + 7) & ~7;

/** The control buffer carrying `fds` (one SCM_RIGHTS message; CMSG_SPACE bytes). Pure. */
export function encodeScmRights(fds: readonly number[]): Buffer {
  const buf = Buffer.alloc(CMSG_HDR + align8(4 * fds.length));
  buf.writeBigUInt64LE(BigInt(CMSG_HDR + 4 * fds.length), 0); // CMSG_LEN
  buf.writeInt32LE(SOL_SOCKET, 8);
  buf.writeInt32LE(SCM_RIGHTS, 12);
  fds.forEach((fd, i) => buf.writeInt32LE(fd, CMSG_HDR + 4 * i));
  return buf;
}

/** Room for a control message of up to `maxFds` descriptors (CMSG_SPACE). Pure. */
export function scmRightsSpace(maxFds: number): number {
  return CMSG_HDR + align8(4 * maxFds);
}

/**
 * The descriptors in a received control buffer (its first `length` bytes), and whether anything else was there (another
 * level or type, a malformed header): the caller must then close the descriptors and refuse the message. Pure.
 */
export function decodeScmRights(control: Buffer, length: number): { fds: number[]; malformed: boolean } {
  const fds: number[] = [];
  let malformed = false;
  let off = 0;
  const end = Math.min(length, control.length);
  while (off + CMSG_HDR <= end) {
    const len = Number(control.readBigUInt64LE(off));
    const level = control.readInt32LE(off + 8);
    const type = control.readInt32LE(off + 12);
    if (len < CMSG_HDR || off + len > end) {
      malformed = true;
      break;
    }
    if (level === SOL_SOCKET && type === SCM_RIGHTS && (len - CMSG_HDR) % 4 === 0) {
      for (let p = off + CMSG_HDR; p < off + len; p += 4) fds.push(control.readInt32LE(p));
    } else malformed = true;
    off += align8(len);
  }
  if (off < end) malformed = true;
  return { fds, malformed };
}

/** A listening SOCK_SEQPACKET socket at `path` (replacing a stale one), mode 0600, non-blocking; returns its fd. */
export function listenUnixSeqpacket(path: string): number {
  rmSync(path, { force: true });
  const fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC);
  try {
    bind(fd, sockaddrUn(path));
    chmodSync(path, 0o600);
    listen(fd, 1);
    return fd;
  } catch (err) {
    close(fd);
    rmSync(path, { force: true });
    throw err;
  }
}

/** The connected peer's process credentials (SO_PEERCRED: as they were at connect or listen time). */
export function peerCredentials(fd: number): { pid: number; uid: number; gid: number } {
  const b = getsockoptBuf(fd, SOL_SOCKET, SO_PEERCRED, 12, 'SO_PEERCRED');
  return { pid: b.readInt32LE(0), uid: b.readUInt32LE(4), gid: b.readUInt32LE(8) };
}

/** The socket's domain and type (SO_DOMAIN, SO_TYPE): what a received descriptor really is. */
export function socketKind(fd: number): { domain: number; type: number } {
  return {
    domain: getsockoptBuf(fd, SOL_SOCKET, SO_DOMAIN, 4, 'SO_DOMAIN').readInt32LE(0),
    type: getsockoptBuf(fd, SOL_SOCKET, SO_TYPE, 4, 'SO_TYPE').readInt32LE(0),
  };
}

/**
 * Tries `step` until it returns something other than undefined, or until `deadline` (then undefined). Between tries it
 * waits for `fd` to become ready for `events` on a worker thread (at most 50 ms a wait, so the deadline is kept).
 */
export async function pollUntil<T>(step: () => T | undefined, deadline: number, fd?: number, events = POLLIN): Promise<T | undefined> {
  for (;;) {
    const v = step();
    if (v !== undefined) return v;
    const left = deadline - Date.now();
    if (left <= 0) return undefined;
    if (fd === undefined) await new Promise((r) => setTimeout(r, Math.min(left, 5)));
    else await pollAsync(fd, events, Math.min(left, 50));
  }
}

/** Connects a non-blocking SOCK_SEQPACKET socket to `path` by `deadline`; throws when nothing listens there. */
export async function connectUnixSeqpacket(path: string, deadline: number): Promise<number> {
  const fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC);
  try {
    const addr = sockaddrUn(path);
    const ok = await pollUntil(() => (connect(fd, addr) ? true : undefined), deadline);
    if (!ok) throw new Error(`connect ${path}: the listener's queue stayed full`);
    return fd;
  } catch (err) {
    close(fd);
    throw err;
  }
}

/** Sends one message with `fds` attached by `deadline`; throws on a closed peer or when the deadline passes. */
export async function sendMessage(fd: number, data: Buffer, fds: readonly number[], deadline: number): Promise<void> {
  const control = fds.length ? encodeScmRights(fds) : null;
  const sent = await pollUntil(() => sendmsg(fd, data, control, MSG_DONTWAIT | MSG_NOSIGNAL), deadline, fd, POLLOUT);
  if (sent === undefined) throw new Error('the peer did not take the message in time');
  if (sent !== data.length) throw new Error(`sent ${sent} of ${data.length} bytes`);
}

/** One received message: its bytes and descriptors (close-on-exec; the caller owns them), or `closed` when the peer closed. */
export type Received = { closed: true } | { closed: false; data: Buffer; fds: number[]; problem?: string };

/**
 * Receives one message of at most `maxBytes` with at most `maxFds` descriptors by `deadline` (undefined: nothing came).
 * A truncated message, truncated control data or foreign control messages come back with `problem` set: the caller
 * closes the descriptors and refuses it.
 */
export async function receiveMessage(fd: number, maxBytes: number, maxFds: number, deadline: number): Promise<Received | undefined> {
  const data = Buffer.alloc(maxBytes + 1);
  const control = Buffer.alloc(scmRightsSpace(maxFds));
  const r = await pollUntil(() => recvmsg(fd, data, control, MSG_DONTWAIT | MSG_CMSG_CLOEXEC), deadline, fd);
  if (r === undefined) return undefined;
  const { fds, malformed } = decodeScmRights(control, r.controlLength);
  if (r.bytes === 0 && fds.length === 0) return { closed: true };
  let problem: string | undefined;
  if (r.flags & MSG_CTRUNC) problem = `more than ${maxFds} descriptors in one message`;
  else if (r.flags & MSG_TRUNC || r.bytes > maxBytes) problem = `message over ${maxBytes} bytes`;
  else if (malformed) problem = 'unexpected control data';
  return { closed: false, data: data.subarray(0, Math.min(r.bytes, maxBytes)), fds, ...(problem ? { problem } : {}) };
}

/** Closes descriptors received but not used (close(2) only: the connections stay with whoever else holds them). */
export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) close(fd);
}
