// Unit tests for the rtnetlink encoders (platform/rtnetlink.ts): the bytes of the policy-routing requests (a fwmark rule
// and a table's local default route, per family) and how an acknowledgement is read from the kernel's answer.
import test from 'ava';
import { ackErrno, fwmarkRuleRequest, localDefaultRouteRequest } from '../../agent/src/platform/rtnetlink.js';

const RULE = { pref: 32764, mark: 0x111, mask: 0xfff, table: 100 };
const attr = (type: number, value: number): number[] => [8, 0, type, 0, value & 0xff, (value >> 8) & 0xff, (value >> 16) & 0xff, value >>> 24];

test('the local default route: RTM_NEWROUTE create+replace, type local, scope host (IPv4) or universe (IPv6), table and lo', (t) => {
  for (const [family, af, scope] of [[4, 2, 254], [6, 10, 0]] as const) {
    const r = localDefaultRouteRequest(family, 100);
    t.deepEqual([...r.bytes], [
      44, 0, 0, 0, 24, 0, 0x05, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, // length, RTM_NEWROUTE, REQUEST|ACK|REPLACE|CREATE, seq, pid
      af, 0, 0, 0, 100, 3, scope, 2, 0, 0, 0, 0, // rtmsg: default (dst_len 0), table 100, proto boot, RTN_LOCAL
      ...attr(15, 100), ...attr(4, 1), // RTA_TABLE, RTA_OIF lo
    ]);
    t.falsy(r.existsIsDone, 'a replace never answers EEXIST');
  }
  t.is(localDefaultRouteRequest(4, 1000).bytes[20], 0, 'a table past 255 only in RTA_TABLE');
});

test('the fwmark rule: RTM_NEWRULE create+exclusive, to-table, pref, mark, mask, table; EEXIST means already there', (t) => {
  const r = fwmarkRuleRequest(6, RULE);
  t.deepEqual([...r.bytes], [
    60, 0, 0, 0, 32, 0, 0x05, 0x06, 0, 0, 0, 0, 0, 0, 0, 0, // RTM_NEWRULE, REQUEST|ACK|EXCL|CREATE
    10, 0, 0, 0, 100, 0, 0, 1, 0, 0, 0, 0, // fib_rule_hdr: AF_INET6, table 100, FR_ACT_TO_TBL
    ...attr(6, 32764), ...attr(10, 0x111), ...attr(16, 0xfff), ...attr(15, 100),
  ]);
  t.true(r.existsIsDone);
  t.is(r.what, 'ip -6 rule add pref 32764 fwmark 0x111/0xfff lookup 100');
});

test('an acknowledgement is found by its sequence number; anything else is no answer', (t) => {
  const ack = (seq: number, errno: number): Buffer => {
    const b = Buffer.alloc(36);
    b.writeUInt32LE(36, 0);
    b.writeUInt16LE(2, 4); // NLMSG_ERROR
    b.writeUInt32LE(seq, 8);
    b.writeInt32LE(-errno, 16);
    return b;
  };
  t.is(ackErrno(ack(3, 0), 3), 0);
  t.is(ackErrno(ack(3, 17), 3), 17);
  t.is(ackErrno(Buffer.concat([ack(2, 1), ack(3, 0)]), 3), 0, 'the second message of a datagram');
  t.is(ackErrno(ack(2, 0), 3), undefined, 'another request\'s');
  t.is(ackErrno(ack(3, 0).subarray(0, 20), 3), undefined, 'truncated');
  t.is(ackErrno(Buffer.alloc(0), 1), undefined);
});
