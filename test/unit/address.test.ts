// Unit tests for the one address helper: canonical IPv6 text (RFC 5952), IPv4-mapped addresses, families, and
// host:port with IPv6 brackets (formatting, and a strict parse of HBONE's :authority).
import test from 'ava';
import { isIP } from 'node:net';
import { addressesOf, canonicalIp, familiesOf, formatHostPort, formatWords, ipFamily, ipv6Words, normalizeIp, parseIp, parseIpPort, sameIp } from '../../agent/src/protocol/address.js';

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

test('strict: a zone, brackets, whitespace, a prefix or anything else beside a plain address is not one (node\'s isIP takes some)', (t) => {
  const bad = [
    'fe80::1%eth0', 'fd00::1%1', 'fe80::1%', '[fd00::1]', '[10.0.0.1]', ' 10.0.0.1', '10.0.0.1 ', '\t::1', '::1\n', 'fd00:: 1',
    '10.0.0.1/32', 'fd00::/64', '010.0.0.1', '10.0.0.01', '+10.0.0.1', '0x0a.0.0.1', 'fd00::1:', ':fd00::1', '::ffff:10.0.0.1%eth0',
  ];
  for (const s of bad) {
    t.is(canonicalIp(s), undefined, JSON.stringify(s));
    t.is(parseIp(s), undefined, JSON.stringify(s));
    t.is(ipFamily(s), undefined, JSON.stringify(s));
    t.false(sameIp(s, s), JSON.stringify(s));
  }
  t.is(canonicalIp('fe80::1%eth0'), undefined, 'a second call (from the cache) is just as strict');
  t.is(parseIpPort('[fe80::1%eth0]:80'), undefined);
});

test('parseIp: forms of IPv4 and IPv6; keepMapped leaves ::ffff:a.b.c.d as the IPv6 address it is written as', (t) => {
  t.deepEqual(parseIp('10.0.0.1'), { family: 4, value: 0x0a000001n });
  t.deepEqual(parseIp('::ffff:10.0.0.1'), { family: 4, value: 0x0a000001n });
  t.deepEqual(parseIp('::ffff:10.0.0.1', { keepMapped: true }), { family: 6, value: (0xffffn << 32n) | 0x0a000001n });
  t.deepEqual(parseIp('::1'), { family: 6, value: 1n });
  t.deepEqual(parseIp('::'), { family: 6, value: 0n });
  t.deepEqual(parseIp('1::'), { family: 6, value: 1n << 112n });
  t.deepEqual(parseIp('64:ff9b::1.2.3.4'), { family: 6, value: (0x64n << 112n) | (0xff9bn << 96n) | 0x01020304n });
  t.is(parseIp('10.0.0.256'), undefined);
  t.is(parseIp('nope'), undefined);
});

test('addressesOf: the addresses of one family, IPv4-mapped as IPv4, junk left out', (t) => {
  const ips = ['10.0.0.1', 'fd00::1', '::ffff:10.0.0.2', 'x'];
  t.deepEqual(addressesOf(ips, 'ipv4'), ['10.0.0.1', '::ffff:10.0.0.2']);
  t.deepEqual(addressesOf(ips, 'ipv6'), ['fd00::1']);
  t.deepEqual(addressesOf([], 'ipv4'), []);
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

/** Deterministic text shaped like addresses and near misses: hex groups of 0-5 digits, `:`/`::`, dotted quads, stray bytes. */
function addressLikeTexts(count: number): string[] {
  let seed = 0x2545f491;
  const rand = (n: number): number => {
    seed ^= seed << 13; seed ^= seed >>> 17; seed ^= seed << 5;
    return (seed >>> 0) % n;
  };
  const hex = '0123456789abcdefABCDEF';
  const stray = ['%', 'g', ' ', '[', ']', '/', '.', '-', '+', 'x'];
  const out: string[] = [];
  for (let k = 0; k < count; k++) {
    let s = rand(4) === 0 ? ':' : '';
    const parts = 1 + rand(10);
    for (let p = 0; p < parts; p++) {
      if (p > 0) s += rand(6) === 0 ? '::' : ':';
      if (rand(12) === 0) {
        s += Array.from({ length: 3 + rand(3) }, () => String(rand(8) === 0 ? rand(400) : rand(256)).padStart(rand(6) === 0 ? 3 : 1, '0')).join('.');
      } else {
        s += Array.from({ length: rand(6) }, () => hex[rand(hex.length)]).join('');
      }
    }
    if (rand(5) === 0) s += rand(2) ? ':' : '::';
    if (rand(15) === 0) s = s.slice(0, rand(s.length + 1)) + stray[rand(stray.length)] + s.slice(rand(s.length + 1));
    out.push(s);
  }
  return out;
}

test('the one-pass reader takes exactly what node\'s isIP takes (minus zones), and reads the words node\'s URL parser reads', (t) => {
  let v6 = 0;
  let v4 = 0;
  const texts = [...addressLikeTexts(40_000), '1.2.3.4', '255.255.255.255', '0.0.0.0', '01.2.3.4', '1.2.3', '1.2.3.4.5', '::1.2.3.4', '1:2:3:4:5:6:1.2.3.4', '1:2:3:4:5:6:7:1.2.3.4', '1::2:3:4:5:6:7:8', '1:2:3:4:5:6:7::', '::2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'];
  for (const s of texts) {
    const family = isIP(s);
    const ip = parseIp(s, { keepMapped: true });
    t.is(ip?.family ?? 0, s.includes('%') ? 0 : family, JSON.stringify(s));
    if (family === 6 && ip) {
      v6++;
      const words = ipv6Words(s) as number[];
      t.is(`[${formatWords(words)}]`, new URL(`http://[${s}]/`).hostname, JSON.stringify(s));
      t.is(words.reduce((a, w) => (a << 16n) | BigInt(w), 0n), ip.value, JSON.stringify(s));
    }
    if (family === 4) {
      v4++;
      t.is(ip?.value, s.split('.').reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n), s);
    }
    t.is(canonicalIp(s) !== undefined, !s.includes('%') && family !== 0, JSON.stringify(s));
  }
  t.true(v6 > 1000 && v4 > 20, `the texts held ${v6} IPv6 and ${v4} IPv4 addresses`);
});

test('parseIp hands out one frozen value per text (a connection\'s checks share it), never a wrong one for junk', (t) => {
  const a = parseIp('fd00::7');
  t.is(parseIp('fd00::7'), a);
  t.true(Object.isFrozen(a));
  t.is(parseIp('fd00::7%eth0'), undefined);
  t.is(parseIp('x'.repeat(46)), undefined);
  t.deepEqual(parseIp('::ffff:10.0.0.1', { keepMapped: true }), { family: 6, value: (0xffffn << 32n) | 0x0a000001n }, 'keepMapped is not served from the mapped cache');
  t.deepEqual(parseIp('::ffff:10.0.0.1'), { family: 4, value: 0x0a000001n });
});
