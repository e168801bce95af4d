// The socket address encodings of platform/libc.ts (struct sockaddr_in / sockaddr_in6, byte for byte) and the choice of
// a socket's family from the address it is given. Pure: no socket is made.
import test from 'ava';
import {
  AF_INET, AF_INET6, SOCKADDR_IN6_SIZE, inetAddress, parseSockaddrIn6, parseSockaddrInet, sockaddrIn, sockaddrIn6, sockaddrInet,
} from '../../agent/src/platform/libc.js';

test('sockaddr_in6 is 28 bytes: family (host order), port (big-endian), flowinfo, the 16 address bytes, scope id', (t) => {
  const b = sockaddrIn6('fd00:db8::2', 15008);
  t.is(b.length, SOCKADDR_IN6_SIZE);
  t.is(b.length, 28);
  t.is(b.toString('hex'), [
    '0a00', // AF_INET6 = 10, little-endian on x86_64 / aarch64
    '3aa0', // 15008
    '00000000', // flowinfo
    'fd000db8000000000000000000000002',
    '00000000', // scope id
  ].join(''));
  t.is(sockaddrIn6('fe80::1', 80, 3).readUInt32LE(24), 3, 'a link-local address carries its interface as the scope id');
  t.is(sockaddrIn6('::', 0).subarray(4).toString('hex'), '0'.repeat(48), 'the wildcard is all zeros');
  t.is(sockaddrIn6('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 65535).subarray(2, 24).toString('hex'), `ffff00000000${'f'.repeat(32)}`);
});

test('sockaddr_in6 takes a plain IPv6 address only; an IPv4-mapped one is encoded as written', (t) => {
  t.is(sockaddrIn6('::ffff:10.1.2.3', 80).subarray(8, 24).toString('hex'), '00000000000000000000ffff0a010203');
  for (const bad of ['10.0.0.1', 'fe80::1%eth0', '[::1]', '::1/128', ' ::1', 'localhost', '']) {
    t.throws(() => sockaddrIn6(bad, 80), { message: /not an IPv6 address/ }, bad);
  }
});

test('a sockaddr_in6 reads back canonical (RFC 5952; IPv4-mapped is the IPv4 address), with port and scope id', (t) => {
  for (const [written, canonical] of [
    ['FD00:0DB8:0000:0000:0000:0000:0000:0002', 'fd00:db8::2'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
    ['::1', '::1'],
    ['::', '::'],
    ['::ffff:10.1.2.3', '10.1.2.3'],
    ['::ffff:a01:203', '10.1.2.3'],
    ['fd16:9254:7127:1337:ffff:ffff:ffff:ffff', 'fd16:9254:7127:1337:ffff:ffff:ffff:ffff'],
  ] as const) {
    t.deepEqual(parseSockaddrIn6(sockaddrIn6(written, 15006, 7)), { address: canonical, port: 15006, scopeId: 7 }, written);
  }
  t.throws(() => parseSockaddrIn6(sockaddrIn('10.0.0.1', 80)), { message: /not a sockaddr_in6/ });
  t.throws(() => parseSockaddrIn6(sockaddrIn6('::1', 80).subarray(0, 24)), { message: /not a sockaddr_in6/ }, 'too short');
});

test('the family follows the address: IPv6 text is AF_INET6 (canonical), IPv4 and IPv4-mapped are AF_INET', (t) => {
  for (const [given, family, address] of [
    ['10.0.0.1', AF_INET, '10.0.0.1'],
    ['0.0.0.0', AF_INET, '0.0.0.0'],
    ['::', AF_INET6, '::'],
    ['::1', AF_INET6, '::1'],
    ['FD00::0001', AF_INET6, 'fd00::1'],
    ['::ffff:10.0.0.1', AF_INET, '10.0.0.1'],
    ['::FFFF:a00:1', AF_INET, '10.0.0.1'],
    // Not an address and no colon: left to IPv4 as before (a dial's host name is Node's to resolve, as it always was).
    ['localhost', AF_INET, 'localhost'],
  ] as const) {
    t.deepEqual(inetAddress(given), { family, address }, given);
  }
  for (const bad of ['fe80::1%eth0', '[::1]', '::1/64', 'a:b', '1:2:3:4:5:6:7:8:9']) {
    t.throws(() => inetAddress(bad), { message: /not an IP address/ }, bad);
  }
});

test('sockaddrInet encodes by family and parseSockaddrInet reads either', (t) => {
  t.deepEqual(sockaddrInet('10.1.2.3', 15001), sockaddrIn('10.1.2.3', 15001), 'IPv4: the very same sockaddr_in');
  t.deepEqual(sockaddrInet('fd00::1', 15001), sockaddrIn6('fd00::1', 15001));
  t.deepEqual(sockaddrInet('::ffff:10.1.2.3', 15001), sockaddrIn('10.1.2.3', 15001), 'IPv4-mapped: a sockaddr_in');
  t.throws(() => sockaddrInet('10.1.2', 80), { message: /not an IPv4 address/ });
  t.deepEqual(parseSockaddrInet(sockaddrInet('10.1.2.3', 80)), { address: '10.1.2.3', port: 80 });
  t.deepEqual(parseSockaddrInet(sockaddrInet('fd00:0::1', 80)), { address: 'fd00::1', port: 80 });
  t.throws(() => parseSockaddrInet(Buffer.alloc(16)), { message: /not a sockaddr_in/ }, 'AF_UNSPEC is neither');
});

test('sockaddr_in: family (host order), port and address (big-endian); only a dotted quad as node\'s isIPv4 takes it', (t) => {
  t.deepEqual([...sockaddrIn('10.244.1.2', 15006)], [2, 0, 0x3a, 0x9e, 10, 244, 1, 2, 0, 0, 0, 0, 0, 0, 0, 0]);
  t.deepEqual([...sockaddrIn('255.255.255.255', 0).subarray(4, 8)], [255, 255, 255, 255]);
  t.deepEqual(parseSockaddrInet(sockaddrIn('0.0.0.0', 65535)), { address: '0.0.0.0', port: 65535 });
  for (const bad of ['1.2.3', '1.2.3.4.5', '256.1.1.1', '01.2.3.4', ' 1.2.3.4', '1.2.3.4 ', '1..3.4', '1.2.3.-4', '1.2.3.4/32', '', '::1']) {
    t.throws(() => sockaddrIn(bad, 80), { message: /not an IPv4 address/ }, bad);
  }
});
