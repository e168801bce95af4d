// ipset add and del sent from the agent itself over NETLINK_NETFILTER in its own namespace, with their encoders: the
// node's probe sets change with every enrolled pod's ADD and DEL without an `ipset` process each.
import { ipv4Bits, ipv6Words } from '../protocol/address.js';
import { NETLINK_NETFILTER, NLM_F_ACK, NLM_F_REQUEST, netlinkAttr as attr, netlinkMessage, sendNetlink, type RtnlRequest } from './rtnetlink.js';

const NFNL_SUBSYS_IPSET = 6;
const IPSET_CMD_ADD = 9;
const IPSET_CMD_DEL = 10;
/** The oldest protocol the kernel's add and del take (IPSET_PROTOCOL_MIN): what every kernel with ipset answers. */
const IPSET_PROTOCOL = 6;
const IPSET_ATTR_PROTOCOL = 1;
const IPSET_ATTR_SETNAME = 2;
const IPSET_ATTR_DATA = 7;
const IPSET_ATTR_IP = 1;
const IPSET_ATTR_IPADDR_IPV4 = 1;
const IPSET_ATTR_IPADDR_IPV6 = 2;
const IPSET_ATTR_COMMENT = 26;
const NLA_F_NESTED = 0x8000;
const NLA_F_NET_BYTEORDER = 0x4000;
const NFPROTO_IPV4 = 2;
const NFPROTO_IPV6 = 10;
/** IPSET_MAXNAMELEN, the NUL included. */
const MAX_SETNAME = 32;
/** IPSET_MAX_COMMENT_SIZE, the NUL included. */
const MAX_COMMENT = 255;

/** ENOENT as ipset answers it, and the kernel's ipset-specific errors (uapi linux/netfilter/ipset/ip_set.h). */
const IPSET_ERRORS: Record<number, string> = {
  2: 'no set of that name',
  4097: 'the kernel refused the request (IPSET_ERR_PROTOCOL: e.g. an address of the set\'s other family)',
  4098: 'the set is of another family than the address',
  4099: 'the set is full',
  4100: 'the set is busy',
  4101: 'a set of that name already exists',
  4102: 'the set is referenced',
  4103: 'an ipset type mismatch',
  4104: 'the element is already in the set',
  4105: 'an invalid CIDR',
  4106: 'an invalid netmask',
  4107: 'an invalid family',
  4108: 'the set has no timeout extension',
  4109: 'a second set of that name already exists',
  4110: 'an invalid IPv4 address',
  4111: 'an invalid IPv6 address',
  4112: 'the set has no counters extension',
  4113: 'the set has no comment extension',
};

/** A NUL-terminated string attribute; throws for one longer than `max` bytes with its NUL, or holding a NUL. */
function stringAttr(type: number, text: string, max: number, what: string): Buffer {
  const bytes = Buffer.from(`${text}\0`, 'utf8');
  if (bytes.length > max || text.includes('\0')) throw new Error(`${what} ${JSON.stringify(text)}: over ${max - 1} bytes or holding a NUL`);
  return attr(type, bytes);
}

/** A comment as the set can hold it (a label only): NULs dropped, cut to IPSET_MAX_COMMENT_SIZE with its NUL. Pure. */
export function fitComment(text: string): string {
  let c = text.replaceAll('\0', '');
  while (Buffer.byteLength(c, 'utf8') > MAX_COMMENT - 1) c = c.slice(0, -1);
  return c;
}

/** The address in network byte order, and its family; throws for text that is not a plain IPv4 or IPv6 address. */
function addressBytes(addr: string): { family: 4 | 6; bytes: Buffer } {
  const v4 = ipv4Bits(addr);
  if (v4 >= 0) {
    const bytes = Buffer.alloc(4);
    bytes.writeUInt32BE(v4 >>> 0);
    return { family: 4, bytes };
  }
  const words = ipv6Words(addr);
  if (!words) throw new Error(`not an address for an ipset: ${JSON.stringify(addr)}`);
  const bytes = Buffer.alloc(16);
  words.forEach((w, i) => bytes.writeUInt16BE(w, i * 2));
  return { family: 6, bytes };
}

/**
 * `ipset add <set> <addr> [comment <comment>] -exist` (cmd 'add') or `ipset del <set> <addr> -exist` ('del') for a
 * hash:ip set: without NLM_F_EXCL the kernel takes an element already there (add: its comment replaced) or not there
 * (del) as done, as `-exist` does. The comment is fitted (fitComment); a set name over 31 bytes throws. Pure.
 */
export function ipsetRequest(cmd: 'add' | 'del', set: string, addr: string, comment?: string): RtnlRequest {
  const { family, bytes } = addressBytes(addr);
  const nfgen = Buffer.alloc(4); // struct nfgenmsg: family, version 0, res_id 0
  nfgen.writeUInt8(family === 6 ? NFPROTO_IPV6 : NFPROTO_IPV4, 0);
  const ip = attr(IPSET_ATTR_IP | NLA_F_NESTED, attr((family === 6 ? IPSET_ATTR_IPADDR_IPV6 : IPSET_ATTR_IPADDR_IPV4) | NLA_F_NET_BYTEORDER, bytes));
  const data = [ip, ...(comment === undefined ? [] : [stringAttr(IPSET_ATTR_COMMENT, fitComment(comment), MAX_COMMENT, 'ipset comment')])];
  const attrs = [attr(IPSET_ATTR_PROTOCOL, Buffer.from([IPSET_PROTOCOL])), stringAttr(IPSET_ATTR_SETNAME, set, MAX_SETNAME, 'ipset name'), attr(IPSET_ATTR_DATA | NLA_F_NESTED, Buffer.concat(data))];
  const type = (NFNL_SUBSYS_IPSET << 8) | (cmd === 'add' ? IPSET_CMD_ADD : IPSET_CMD_DEL);
  return {
    bytes: netlinkMessage(type, NLM_F_REQUEST | NLM_F_ACK, nfgen, attrs),
    what: `ipset ${cmd} ${set} ${addr}${comment === undefined ? '' : ` comment ${JSON.stringify(comment)}`} -exist`,
  };
}

/** What an errno the kernel answered an ipset request with means (its own codes named as `ipset` names them). Pure. */
export function ipsetErrorText(errno: number): string {
  return IPSET_ERRORS[errno] ?? `errno ${errno}`;
}

/** Sends one ipset add or del to the kernel in the agent's own namespace; throws naming the request and the error. */
export function applyIpset(request: RtnlRequest): void {
  const [outcome] = sendNetlink(undefined, NETLINK_NETFILTER, [request]);
  if (outcome && outcome.errno !== 0) throw new Error(`${outcome.what} failed: ${ipsetErrorText(outcome.errno)}`);
}
