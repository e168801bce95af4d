// The nf_tables generation of a pod's network namespace and the namespace's cookie, asked over a NETLINK_NETFILTER
// socket made there: unchanged, they prove no nftables change (iptables-nft's included) was committed in it since.
import { SOCK_CLOEXEC, SOL_SOCKET, close, getsockoptBuf, recvmsg, sendmsg, socket } from './libc.js';
import { withNetns, type Netns } from './netns.js';
import { netlinkMessage } from './rtnetlink.js';

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const NETLINK_NETFILTER = 12;
const MSG_DONTWAIT = 0x40;
const NLM_F_REQUEST = 0x1;
const NLMSG_ERROR = 2;
const NLMSG_HDRLEN = 16;
const NFGENMSG_LEN = 4;
const NFNL_SUBSYS_NFTABLES = 10;
const NFT_MSG_NEWGEN = 15;
const NFT_MSG_GETGEN = 16;
const NFTA_GEN_ID = 1;
/** Attribute type bits that are flags, not the type (NLA_F_NESTED, NLA_F_NET_BYTEORDER). */
const NLA_TYPE_MASK = 0x3fff;
/** getsockopt: the 64-bit cookie of the socket's network namespace (Linux 5.14), never reused while the node runs. */
const SO_NETNS_COOKIE = 71;
const SEQ = 1;

/**
 * Where a namespace's nf_tables stand: its generation (bumped by every committed nftables transaction there: a rule,
 * chain or table change by nft or iptables-nft) and the namespace's cookie (a namespace made later, at the same path or
 * with the same inode, has another). Equal twice, nothing was committed in that namespace in between.
 */
export interface NfGeneration {
  gen: number;
  netnsCookie: string;
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
  for (let off = 0; off + NLMSG_HDRLEN <= answer.length;) {
    const len = answer.readUInt32LE(off);
    if (len < NLMSG_HDRLEN || off + len > answer.length) break;
    const type = answer.readUInt16LE(off + 4);
    if (type === NLMSG_ERROR && len >= NLMSG_HDRLEN + 4) {
      const error = answer.readInt32LE(off + NLMSG_HDRLEN);
      if (error !== 0) throw new Error(`the kernel refused NFT_MSG_GETGEN (errno ${-error})`);
    }
    if (type === ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN)) {
      for (let a = off + NLMSG_HDRLEN + NFGENMSG_LEN; a + 4 <= off + len;) {
        const alen = answer.readUInt16LE(a);
        if (alen < 4 || a + alen > off + len) break;
        if ((answer.readUInt16LE(a + 2) & NLA_TYPE_MASK) === NFTA_GEN_ID && alen >= 8) return answer.readUInt32BE(a + 4);
        a += (alen + 3) & ~3;
      }
    }
    off += (len + 3) & ~3;
  }
  throw new Error('no nf_tables generation in the kernel\'s answer');
}

const ANSWER_SIZE = 512;

/**
 * The namespace's nf_tables generation and cookie, read over one NETLINK_NETFILTER socket made inside it. The kernel
 * answers NFT_MSG_GETGEN within sendmsg, so the answer is read without waiting (missing: an error, never a wait).
 */
export function readNfGeneration(ns: Netns): NfGeneration {
  const fd = withNetns(ns, () => socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER));
  try {
    const netnsCookie = getsockoptBuf(fd, SOL_SOCKET, SO_NETNS_COOKIE, 8, 'SO_NETNS_COOKIE').readBigUInt64LE(0).toString();
    const request = getGenRequest();
    if (sendmsg(fd, request, null, 0) !== request.length) throw new Error('NFT_MSG_GETGEN: short write on the netfilter socket');
    const answer = Buffer.alloc(ANSWER_SIZE);
    const got = recvmsg(fd, answer, Buffer.alloc(0), MSG_DONTWAIT);
    if (!got) throw new Error('NFT_MSG_GETGEN: no answer from the kernel on the netfilter socket');
    return { gen: parseGenAnswer(answer.subarray(0, got.bytes)), netnsCookie };
  } finally {
    close(fd);
  }
}

