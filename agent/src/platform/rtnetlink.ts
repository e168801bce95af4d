// Netlink requests sent from the agent itself (into a pod's namespace through a socket made there, or its own), with the
// rtnetlink encoders: the in-pod policy routing (a fwmark rule, a table's local default route) without an `ip` process.
import { AF_INET, AF_INET6, MSG_DONTWAIT, SOCK_CLOEXEC, close, recvmsg, sendmsg, socket } from './libc.js';
import { withNetns, type Netns } from './netns.js';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_ROUTE = 0;
/** The netlink family of nf_tables and ipset (nfnetlink): nf-generation.ts, ipset-netlink.ts. */
export const NETLINK_NETFILTER = 12;

export const NLM_F_REQUEST = 0x1;
export const NLM_F_ACK = 0x4;
const NLM_F_REPLACE = 0x100;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
export const NLMSG_ERROR = 2;
const NLMSG_HDRLEN = 16;

const RTM_NEWROUTE = 24;
const RTM_NEWRULE = 32;
const RTA_OIF = 4;
const RTA_TABLE = 15;
const RTN_LOCAL = 2;
const RTPROT_BOOT = 3;
const RT_SCOPE_UNIVERSE = 0;
const RT_SCOPE_HOST = 254;
const FRA_PRIORITY = 6;
const FRA_FWMARK = 10;
const FRA_TABLE = 15;
const FRA_FWMASK = 16;
const FR_ACT_TO_TBL = 1;
/** The kernel gives every namespace's loopback device this index (LOOPBACK_IFINDEX). */
const LOOPBACK_IFINDEX = 1;
/** EEXIST, as a negative errno in an NLMSG_ERROR answer. */
const EEXIST = 17;

/**
 * An rtnetlink request: its bytes (sequence number 0: sendRtnetlink numbers them), what it does (for errors), and whether
 * EEXIST means done (an exclusive create of something already there).
 */
export interface RtnlRequest {
  bytes: Buffer;
  what: string;
  existsIsDone?: boolean;
}

export type RtFamily = 4 | 6;

const afOf = (family: RtFamily): number => (family === 6 ? AF_INET6 : AF_INET);

/** An attribute (struct rtattr / nlattr: length, type with its flags, the value padded to 4 bytes). */
export function netlinkAttr(type: number, value: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16LE(4 + value.length, 0);
  h.writeUInt16LE(type, 2);
  return Buffer.concat([h, value, Buffer.alloc((4 - (value.length % 4)) % 4)]);
}

/** A u32 attribute in host byte order (8 bytes). */
function u32Attr(type: number, value: number): Buffer {
  const v = Buffer.alloc(4);
  v.writeUInt32LE(value >>> 0);
  return netlinkAttr(type, v);
}

/** struct nlmsghdr (sequence number 0) followed by a family header and attributes (nf-generation.ts and ipset-netlink.ts build with it too). */
export function netlinkMessage(type: number, flags: number, header: Buffer, attrs: Buffer[]): Buffer {
  const body = Buffer.concat([header, ...attrs]);
  const h = Buffer.alloc(NLMSG_HDRLEN);
  h.writeUInt32LE(NLMSG_HDRLEN + body.length, 0);
  h.writeUInt16LE(type, 4);
  h.writeUInt16LE(flags, 6);
  return Buffer.concat([h, body]);
}

/**
 * `ip -<family> route replace local <default> dev lo table <table>`: RTM_NEWROUTE with create and replace (idempotent:
 * an existing route is replaced, never an error). Scope host for IPv4, universe for IPv6, protocol boot, as `ip` sets them. Pure.
 */
export function localDefaultRouteRequest(family: RtFamily, table: number): RtnlRequest {
  const rtm = Buffer.alloc(12); // struct rtmsg: family, dst_len 0 (default), src_len, tos, table, protocol, scope, type, flags
  rtm.writeUInt8(afOf(family), 0);
  rtm.writeUInt8(table < 256 ? table : 0, 4);
  rtm.writeUInt8(RTPROT_BOOT, 5);
  rtm.writeUInt8(family === 6 ? RT_SCOPE_UNIVERSE : RT_SCOPE_HOST, 6);
  rtm.writeUInt8(RTN_LOCAL, 7);
  return {
    bytes: netlinkMessage(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE, rtm, [u32Attr(RTA_TABLE, table), u32Attr(RTA_OIF, LOOPBACK_IFINDEX)]),
    what: `ip -${family} route replace local default dev lo table ${table}`,
  };
}

/** A fwmark rule: packets whose mark under `mask` is `mark` look table `table` up, at preference `pref`. */
export interface FwmarkRule {
  pref: number;
  mark: number;
  mask: number;
  table: number;
}

/**
 * `ip -<family> rule add pref P fwmark M/K lookup T`: RTM_NEWRULE with create and exclusive, so an identical rule already
 * there is answered EEXIST (not added twice; the caller takes that as success). Pure.
 */
export function fwmarkRuleRequest(family: RtFamily, r: FwmarkRule): RtnlRequest {
  const frh = Buffer.alloc(12); // struct fib_rule_hdr: family, dst_len, src_len, tos, table, res1, res2, action, flags
  frh.writeUInt8(afOf(family), 0);
  frh.writeUInt8(r.table < 256 ? r.table : 0, 4);
  frh.writeUInt8(FR_ACT_TO_TBL, 7);
  const attrs = [u32Attr(FRA_PRIORITY, r.pref), u32Attr(FRA_FWMARK, r.mark), u32Attr(FRA_FWMASK, r.mask), u32Attr(FRA_TABLE, r.table)];
  return {
    bytes: netlinkMessage(RTM_NEWRULE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, frh, attrs),
    what: `ip -${family} rule add pref ${r.pref} fwmark 0x${r.mark.toString(16)}/0x${r.mask.toString(16)} lookup ${r.table}`,
    existsIsDone: true,
  };
}

/**
 * The errno of the kernel's answer to request `seq` (0: done), from one datagram of answers; undefined when it holds
 * none for that request. Pure.
 */
export function ackErrno(answer: Buffer, seq: number): number | undefined {
  for (const m of netlinkMessages(answer)) {
    if (m.type === NLMSG_ERROR && m.seq === seq && m.payload.length >= 4) {
      const error = m.payload.readInt32LE(0); // 0, or a negative errno
      return error === 0 ? 0 : -error;
    }
  }
  return undefined;
}

/** One message of a netlink answer: its type, sequence number and payload (what follows struct nlmsghdr). */
export interface NetlinkMessage {
  type: number;
  seq: number;
  payload: Buffer;
}

/** The messages of a netlink answer, in order; stops at the first whose length does not fit the answer. Pure. */
export function* netlinkMessages(answer: Buffer): Generator<NetlinkMessage> {
  for (let off = 0; off + NLMSG_HDRLEN <= answer.length;) {
    const len = answer.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > answer.length) return;
    yield { type: answer.readUInt16LE(off + 4), seq: answer.readUInt32LE(off + 8), payload: answer.subarray(off + NLMSG_HDRLEN, off + len) };
    off += (len + 3) & ~3;
  }
}

/** One request's outcome: 0 (done; EEXIST too for a request that says so), or the errno the kernel answered. */
export interface RtnlOutcome {
  what: string;
  errno: number;
}

const ANSWER_SIZE = 8192;

/**
 * A netlink socket of `protocol` made inside `ns` (it keeps talking to that namespace after the thread switches back;
 * without `ns`, the agent's own). Throws when it cannot be made, or when the thread cannot enter `ns` or come back.
 */
export function netlinkSocket(ns: Netns | undefined, protocol: number): number {
  const open = (): number => socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  return ns ? withNetns(ns, open) : open();
}

/** sendNetlink over NETLINK_ROUTE in `ns`. */
export function sendRtnetlink(ns: Netns, requests: readonly RtnlRequest[]): RtnlOutcome[] {
  return sendNetlink(ns, NETLINK_ROUTE, requests);
}

/**
 * Sends `requests` (each asking for an acknowledgement) in order over a netlink socket of `protocol` made inside `ns`
 * (it keeps talking to that namespace after the thread switches back; without `ns`, the agent's own) and returns each
 * one's answer. The kernel handles a route or ipset request within sendmsg and queues its acknowledgement before
 * sendmsg returns, so the answer is read without waiting (an answer missing then is an error, never a wait on the
 * event loop). Throws for a socket failure; a request the kernel refused is an outcome.
 */
export function sendNetlink(ns: Netns | undefined, protocol: number, requests: readonly RtnlRequest[]): RtnlOutcome[] {
  const fd = netlinkSocket(ns, protocol);
  try {
    const answer = Buffer.alloc(ANSWER_SIZE);
    return requests.map((req, i) => {
      const seq = i + 1;
      const bytes = Buffer.from(req.bytes);
      bytes.writeUInt32LE(seq, 8);
      if (sendmsg(fd, bytes, null, 0) !== bytes.length) throw new Error(`${req.what}: short write on the netlink socket`);
      const got = recvmsg(fd, answer, Buffer.alloc(0), MSG_DONTWAIT);
      const errno = got ? ackErrno(answer.subarray(0, got.bytes), seq) : undefined;
      if (errno === undefined) throw new Error(`${req.what}: no answer from the kernel on the netlink socket`);
      return { what: req.what, errno: errno === EEXIST && req.existsIsDone ? 0 : errno };
    });
  } finally {
    close(fd);
  }
}
