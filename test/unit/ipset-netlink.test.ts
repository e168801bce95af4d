// Unit tests for the ipset requests the agent sends itself (platform/ipset-netlink.ts): the bytes of an add and a del
// per family, the comment fitted to what a set holds, bad names and addresses refused, the kernel's errors named.
import test from 'ava';
import { fitComment, ipsetErrorText, ipsetRequest } from '../../agent/src/platform/ipset-netlink.js';

test('add: ipset subsystem, ADD, request+ack without EXCL (-exist), protocol 6, the set, nested data with a network-order address and the comment', (t) => {
  const r = ipsetRequest('add', 's4', '10.1.2.3', 'u');
  t.deepEqual([...r.bytes], [
    60, 0, 0, 0, 9, 6, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, // length, (NFNL_SUBSYS_IPSET << 8) | IPSET_CMD_ADD, REQUEST|ACK, seq, pid
    2, 0, 0, 0, // nfgenmsg: NFPROTO_IPV4
    5, 0, 1, 0, 6, 0, 0, 0, // IPSET_ATTR_PROTOCOL 6
    7, 0, 2, 0, 0x73, 0x34, 0, 0, // IPSET_ATTR_SETNAME "s4\0"
    24, 0, 7, 0x80, // IPSET_ATTR_DATA | NLA_F_NESTED
    12, 0, 1, 0x80, 8, 0, 1, 0x40, 10, 1, 2, 3, // IPSET_ATTR_IP (nested) { IPSET_ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER }
    6, 0, 26, 0, 0x75, 0, 0, 0, // IPSET_ATTR_COMMENT "u\0"
  ]);
  t.is(r.what, 'ipset add s4 10.1.2.3 comment "u" -exist');
});

test('del of an IPv6 address: DEL, NFPROTO_IPV6, IPSET_ATTR_IPADDR_IPV6 with its 16 bytes, no comment', (t) => {
  const r = ipsetRequest('del', 's6', 'fd00::5');
  t.is(r.bytes.readUInt16LE(4), (6 << 8) | 10);
  t.is(r.bytes.readUInt16LE(6), 5, 'REQUEST|ACK: a missing element is no error');
  t.is(r.bytes[16], 10);
  const data = r.bytes.subarray(16 + 4 + 8 + 8);
  t.deepEqual([...data.subarray(0, 12)], [28, 0, 7, 0x80, 24, 0, 1, 0x80, 20, 0, 2, 0x40]);
  t.deepEqual([...data.subarray(12)], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5]);
  t.is(r.bytes.readUInt32LE(0), r.bytes.length);
  t.is(r.what, 'ipset del s6 fd00::5 -exist');
});

test('names and addresses that cannot be sent are refused; a comment is fitted, never refused', (t) => {
  t.throws(() => ipsetRequest('add', 'x'.repeat(32), '10.0.0.1'), { message: /ipset name/ });
  t.notThrows(() => ipsetRequest('add', 'x'.repeat(31), '10.0.0.1'));
  t.throws(() => ipsetRequest('add', 'a\0b', '10.0.0.1'), { message: /ipset name/ });
  for (const bad of ['10.0.0.256', '10.0.0.1/32', '[fd00::1]', 'fd00::1%eth0', '', 'host']) t.throws(() => ipsetRequest('add', 's', bad), { message: /not an address/ }, bad);
  t.is(fitComment('a\0b'), 'ab');
  t.is(Buffer.byteLength(fitComment('é'.repeat(300))), 254);
  t.is(fitComment('uid-1'), 'uid-1');
  const long = ipsetRequest('add', 's', '10.0.0.1', 'x'.repeat(1000));
  t.is(long.bytes.readUInt32LE(0), long.bytes.length);
});

test('the kernel\'s ipset errors are named; others say their errno', (t) => {
  t.regex(ipsetErrorText(2), /no set of that name/);
  t.regex(ipsetErrorText(4099), /full/);
  t.is(ipsetErrorText(12), 'errno 12');
});
