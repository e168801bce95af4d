// Unit tests for the one address helper: canonical IPv6 text (RFC 5952), IPv4-mapped addresses, families, and
// host:port with IPv6 brackets (formatting, and a strict parse of HBONE's :authority).
import test from 'ava';
import { canonicalIp, familiesOf, formatHostPort, ipFamily, normalizeIp, parseIpPort, sameIp } from '../../agent/src/protocol/address.js';

test('canonical IPv6 text: lower case, no leading zeros, the longest zero run compressed (RFC 5952)', (t) => {
  const cases: [string, string][] = [
    ['fd00::1', 'fd00::1'],
    ['fd00:0:0::1', 'fd00::1'],
    ['FD00:0000:0000:0000:0000:0000:0000:0001', 'fd00::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // first of two equal runs
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero word is not compressed
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['fd00::1%eth0', 'fd00::1'],
    ['10.244.1.5', '10.244.1.5'],
    ['::ffff:10.244.1.5', '10.244.1.5'],
    ['::ffff:af4:105', '10.244.1.5'],
    ['::10.244.1.5', '::af4:105'], // IPv4-compatible (deprecated) stays IPv6
  ];
  for (const [input, want] of cases) t.is(canonicalIp(input), want, input);
});

test('not an address: undefined, and normalizeIp leaves it as it is', (t) => {
  for (const s of ['', 'fd00::1::2', 'fd00:::1', '10.0.0', '10.0.0.256', 'host', '[fd00::1]', 'fd00::g']) {
    t.is(canonicalIp(s), undefined, s);
    t.is(normalizeIp(s), s, s);
  }
});

test('families: IPv4-mapped counts as IPv4; familiesOf lists IPv4 first and ignores junk', (t) => {
  t.is(ipFamily('10.0.0.1'), 'ipv4');
  t.is(ipFamily('::ffff:10.0.0.1'), 'ipv4');
  t.is(ipFamily('fd00::1'), 'ipv6');
  t.is(ipFamily('x'), undefined);
  t.deepEqual(familiesOf(['fd00::1', '10.0.0.1']), ['ipv4', 'ipv6']);
  t.deepEqual(familiesOf(['fd00::1', 'x']), ['ipv6']);
  t.deepEqual(familiesOf([]), []);
  t.true(sameIp('fd00::1', 'fd00:0:0::1'));
  t.true(sameIp('10.0.0.1', '::ffff:10.0.0.1'));
  t.false(sameIp('fd00::1', 'fd00::2'));
  t.false(sameIp('x', 'x'), 'junk is never the same address');
});

test('formatHostPort brackets IPv6 only', (t) => {
  t.is(formatHostPort('10.0.0.1', 15008), '10.0.0.1:15008');
  t.is(formatHostPort('fd00::1', 15008), '[fd00::1]:15008');
  t.is(formatHostPort('productpage.default.svc', '9080'), 'productpage.default.svc:9080');
});

test('parseIpPort accepts IPv4 and bracketed IPv6 and returns the canonical host', (t) => {
  t.deepEqual(parseIpPort('10.244.1.5:8080'), { host: '10.244.1.5', port: 8080 });
  t.deepEqual(parseIpPort('[fd00::1]:8080'), { host: 'fd00::1', port: 8080 });
  t.deepEqual(parseIpPort('[FD00:0:0::1]:1'), { host: 'fd00::1', port: 1 });
  t.deepEqual(parseIpPort('[::ffff:10.244.1.5]:65535'), { host: '10.244.1.5', port: 65535 });
  for (const [input, want] of [['10.0.0.1:80', '10.0.0.1:80'], ['[fd00::a]:80', '[fd00::a]:80']] as const) {
    const p = parseIpPort(input);
    t.is(p && formatHostPort(p.host, p.port), want, 'format(parse(x)) round-trips');
  }
});

test('parseIpPort rejects malformed authorities', (t) => {
  for (const s of [
    undefined, '', 'fd00::1:8080', '[fd00::1]', '[fd00::1]:', '[fd00::1]:0', '[fd00::1]:65536', '[fd00::1]:+80', '[fd00::1]:080000',
    '[fd00::1%eth0]:80', '[10.0.0.1]:80', '[fd00:::1]:80', '[fd00::1]]:80', '[[fd00::1]:80', 'fd00::1]:80', '[fd00::1:80',
    '10.0.0.1', '10.0.0.1:', '10.0.0.1:0', '10.0.0.256:80', 'host:80', ' 10.0.0.1:80', '10.0.0.1:80 ', '[]:80', '[::ffff:10.0.0.1.2]:80',
  ]) t.is(parseIpPort(s), undefined, String(s));
});
