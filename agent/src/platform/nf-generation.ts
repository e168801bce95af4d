// The nf_tables generation of a pod's network namespace and the namespace's cookie, asked over a NETLINK_NETFILTER
// socket made there: unchanged, they prove no nftables change (iptables-nft's included) was committed in it since.
import { readFileSync } from 'node:fs';
import { MSG_DONTWAIT, SOL_SOCKET, close, getsockoptBuf, recvmsg, sendmsg } from './libc.js';
import { withNetns, type Netns } from './netns.js';
import { NETLINK_NETFILTER, NLMSG_ERROR, NLM_F_REQUEST, netlinkMessage, netlinkMessages, netlinkSocket } from './rtnetlink.js';

const NFGENMSG_LEN = 4;
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_NEWGEN = 15;
const NFT_MSG_GETGEN = 16;
const NFTA_GEN_ID = 1;
/** Attribute type bits that are flags, not the type (NLA_F_NESTED, NLA_F_NET_BYTEORDER). */
const NLA_TYPE_MASK = 0x3fff;
/** getsockopt: the 64-bit cookie of the socket's network namespace (Linux 5.14), never reused within one boot. */
const SO_NETNS_COOKIE = 71;
const SEQ = 1;

/**
 * Where a namespace's nf_tables stand: its generation (bumped by every nftables transaction committed there that
 * changes something: a rule, chain or table change by nft or iptables-nft) and the namespace's identity (the node's
 * boot id and the namespace's cookie: a namespace made later, at the same path or with the same inode, in this boot or
 * after a reboot, has another). Equal twice, no change was committed in that namespace in between.
 */
export interface NfGeneration {
  gen: number;
  netnsCookie: string;
}

let bootId: string | undefined;

/** This boot's id (cookies count up from each boot); '' where the kernel does not say. */
function boot(): string {
  if (bootId === undefined) {
    try {
      bootId = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
    } catch {
      bootId = '';
    }
  }
  return bootId;
}

/** NFT_MSG_GETGEN: struct nfgenmsg (AF_UNSPEC, version 0, res_id 0), no attributes. Pure. */
export function getGenRequest(): Buffer {
  const bytes = netlinkMessage((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN, NLM_F_REQUEST, Buffer.alloc(NFGENMSG_LEN), []);
  bytes.writeUInt32LE(SEQ, 8);
  return bytes;
}

/**
 * The generation in the kernel's answer to getGenRequest (NFTA_GEN_ID, big-endian); throws for an NLMSG_ERROR answer
 * (naming its errno) or one that holds no generation. Pure.
 */
export function parseGenAnswer(answer: Buffer): number {
  for (const m of netlinkMessages(answer)) {
    if (m.type === NLMSG_ERROR && m.payload.length >= 4) {
      const error = m.payload.readInt32LE(0);
      if (error !== 0) throw new Error(`the kernel refused NFT_MSG_GETGEN (errno ${-error})`);
    }
    if (m.type === ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN)) {
      for (let a = NFGENMSG_LEN; a + 4 <= m.payload.length;) {
        const alen = m.payload.readUInt16LE(a);
        if (alen < 4 || a + alen > m.payload.length) break;
        if ((m.payload.readUInt16LE(a + 2) & NLA_TYPE_MASK) === NFTA_GEN_ID && alen >= 8) return m.payload.readUInt32BE(a + 4);
        a += (alen + 3) & ~3;
      }
    }
  }
  throw new Error('no nf_tables generation in the kernel\'s answer');
}

const ANSWER_SIZE = 512;

/**
 * The namespace's nf_tables generation and identity, read over one NETLINK_NETFILTER socket made inside it; undefined
 * where they cannot be told (no nf_tables, a kernel before 5.14 without namespace cookies, an answer that makes no
 * sense). The kernel answers NFT_MSG_GETGEN within sendmsg, so the answer is read without waiting. Throws only when
 * the thread cannot enter the namespace or come back from it (withNetns), which no caller may take as "cannot tell".
 */
export function readNfGeneration(ns: Netns): NfGeneration | undefined {
  const fd = withNetns(ns, () => {
    try {
      return netlinkSocket(undefined, NETLINK_NETFILTER); // made in ns: this thread is there now
    } catch {
      return -1;
    }
  });
  if (fd < 0) return undefined;
  try {
    const cookie = getsockoptBuf(fd, SOL_SOCKET, SO_NETNS_COOKIE, 8, 'SO_NETNS_COOKIE').readBigUInt64LE(0).toString();
    const request = getGenRequest();
    if (sendmsg(fd, request, null, 0) !== request.length) return undefined;
    const answer = Buffer.alloc(ANSWER_SIZE);
    const got = recvmsg(fd, answer, Buffer.alloc(0), MSG_DONTWAIT);
    if (!got) return undefined;
    return { gen: parseGenAnswer(answer.subarray(0, got.bytes)), netnsCookie: `${boot()}/${cookie}` };
  } catch {
    return undefined;
  } finally {
    close(fd);
  }
}
