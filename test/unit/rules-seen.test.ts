// Re-adoption's shortcut, its pure parts: the NFT_MSG_GETGEN request and answer, the digest, and when a record of
// rules proved exact stands (redirect/rules-seen.ts, platform/nf-generation.ts, iptables.ts restoreCommits).
import test from 'ava';
import { getGenRequest, parseGenAnswer } from '../../agent/src/platform/nf-generation.js';
import * as ipt from '../../agent/src/redirect/iptables.js';
import { isRulesSeen, nextGeneration, provenSeen, rulesDigest, sameSeen, stillExact } from '../../agent/src/redirect/rules-seen.js';

/** A netlink message: header (length, type, flags, seq 1, pid 0) and payload, padded to 4 bytes. */
function nlmsg(type: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(16);
  h.writeUInt32LE(16 + payload.length, 0);
  h.writeUInt16LE(type, 4);
  h.writeUInt32LE(1, 8);
  const pad = Buffer.alloc((4 - (payload.length % 4)) % 4);
  return Buffer.concat([h, payload, pad]);
}

/** An nlattr: length, type (flags kept), value padded to 4 bytes. */
function attr(type: number, value: Buffer): Buffer {
  const h = Buffer.alloc(4);
  h.writeUInt16LE(4 + value.length, 0);
  h.writeUInt16LE(type, 2);
  return Buffer.concat([h, value, Buffer.alloc((4 - (value.length % 4)) % 4)]);
}

const be32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

const NEWGEN = (10 << 8) | 15;

test('NFT_MSG_GETGEN: nftables subsystem, a request with sequence number 1 and an empty nfgenmsg', (t) => {
  const req = getGenRequest();
  t.is(req.length, 20);
  t.is(req.readUInt32LE(0), 20, 'nlmsg_len');
  t.is(req.readUInt16LE(4), (10 << 8) | 16, 'NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN');
  t.is(req.readUInt16LE(6), 1, 'NLM_F_REQUEST');
  t.is(req.readUInt32LE(8), 1, 'seq');
  t.deepEqual([...req.subarray(16)], [0, 0, 0, 0], 'AF_UNSPEC, NFNETLINK_V0, res_id 0');
});

test('the generation is NFTA_GEN_ID, big-endian, wherever it sits among the attributes', (t) => {
  const pid = attr(2, be32(4242));
  const name = attr(3, Buffer.from('nft\0'));
  t.is(parseGenAnswer(nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), attr(1, be32(77)), pid, name]))), 77);
  t.is(parseGenAnswer(nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), pid, name, attr(1, be32(0xfffffffe))]))), 0xfffffffe);
  // NLA_F_NET_BYTEORDER set on the type is a flag, not another type.
  t.is(parseGenAnswer(nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), attr(1 | 0x4000, be32(9))]))), 9);
});

test('an error answer, an answer without the generation, or a truncated one is an error, never a generation', (t) => {
  const err = Buffer.alloc(4);
  err.writeInt32LE(-95); // EOPNOTSUPP
  t.throws(() => parseGenAnswer(nlmsg(2, Buffer.concat([err, Buffer.alloc(16)]))), { message: /errno 95/ });
  t.throws(() => parseGenAnswer(nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), attr(2, be32(1))]))), { message: /no nf_tables generation/ });
  const whole = nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), attr(1, be32(5))]));
  for (const cut of [0, 10, 16, 22, whole.length - 1]) t.throws(() => parseGenAnswer(whole.subarray(0, cut)), undefined, `cut at ${cut}`);
  // A length that claims more than the datagram holds, or an attribute shorter than its header.
  const lying = Buffer.from(whole);
  lying.writeUInt32LE(4096, 0);
  t.throws(() => parseGenAnswer(lying));
  t.throws(() => parseGenAnswer(nlmsg(NEWGEN, Buffer.concat([Buffer.alloc(4), Buffer.from([2, 0, 1, 0])]))));
});

test('iptables-nft commits each COMMIT section of a restore on its own', (t) => {
  t.is(ipt.restoreCommits(''), 0);
  t.is(ipt.restoreCommits('*nat\n:A - [0:0]\nCOMMIT\n'), 1);
  t.is(ipt.restoreCommits('*mangle\nCOMMIT\n*nat\n-A X -j Y\n COMMIT \n'), 2);
});

test('every table section a restore writes re-adds our chains\' rules, so each commit changes something and moves the generation', (t) => {
  const chains = Object.values(ipt.POD_CHAINS);
  for (const current of ['', '*nat\n-A PREROUTING -j AMBIENT_PRERT\n-A AMBIENT_PRERT -i lo -j RETURN\nCOMMIT\n']) {
    for (const [table, rules, jumps] of [['nat', ipt.podChainRules(4), ipt.podJumpRules()], ['mangle', ipt.podMangleRules(4), ipt.podMangleJumpRules()]] as const) {
      const input = ipt.restoreInput(current, table === 'nat' ? chains : ipt.POD_MANGLE_CHAINS, rules, jumps, table);
      t.is(ipt.restoreCommits(input), 1);
      t.true(input.split('\n').filter((l) => l.startsWith('-A ') && !jumps.includes(l)).length >= 1, input);
    }
  }
});

test('a restore leaves the table exact unless a jump into our chains that is not ours is there', (t) => {
  const chains = Object.values(ipt.POD_CHAINS);
  const jumps = ipt.podJumpRules();
  const save = (...lines: string[]): string => ['*nat', ...lines, 'COMMIT'].join('\n');
  t.true(ipt.restoreLeavesExact('', chains, jumps));
  t.true(ipt.restoreLeavesExact(save(...jumps, ...jumps, '-A AMBIENT_OUTPUT -o lo -j RETURN', '-A AMBIENT_OUTPUT -j DROP'), chains, jumps), 'second jumps and stray rules in our chains go');
  t.true(ipt.restoreLeavesExact(save('-A PREROUTING -j KUBE-SERVICES', '-A KUBE-SERVICES -j RETURN'), chains, jumps), 'others\' chains are none of ours');
  t.false(ipt.restoreLeavesExact(save('-A PREROUTING -i eth0 -j AMBIENT_PRERT'), chains, jumps));
  t.false(ipt.restoreLeavesExact(save('-A KUBE-SERVICES -j AMBIENT_OUTPUT'), chains, jumps));
});

test('pod rules are proved only where every save and restore tool is iptables-nft', (t) => {
  const nft = ['iptables-save v1.8.9 (nf_tables)', 'iptables-restore v1.8.9 (nf_tables)', 'ip6tables-save v1.8.9 (nf_tables)', 'ip6tables-restore v1.8.9 (nf_tables)\n'];
  t.true(ipt.toolsOnNfTables(nft));
  t.false(ipt.toolsOnNfTables([...nft.slice(1), 'iptables-save v1.8.9 (legacy)']));
  t.false(ipt.toolsOnNfTables([...nft.slice(1), '']), 'a tool that did not answer');
  t.false(ipt.toolsOnNfTables(['iptables v1.6.1']), 'too old to say');
  t.false(ipt.toolsOnNfTables([]));
});

const gen = (g: number, cookie = '7'): { gen: number; netnsCookie: string } => ({ gen: g, netnsCookie: cookie });

test('the digest names the backend and every rule in order', (t) => {
  const d = rulesDigest('iptables', [['-A X -j Y', '-A X -j Z'], []]);
  t.is(d, rulesDigest('iptables', [['-A X -j Y', '-A X -j Z'], []]));
  t.not(d, rulesDigest('nftables', [['-A X -j Y', '-A X -j Z'], []]));
  t.not(d, rulesDigest('iptables', [['-A X -j Z', '-A X -j Y'], []]), 'order');
  t.not(d, rulesDigest('iptables', [['-A X -j Y'], ['-A X -j Z']]), 'which part a rule is in');
});

test('a record stands only for the same namespace at the same generation with a wanted digest; a malformed one never', (t) => {
  const seen = { ...gen(5), digest: 'd1' };
  t.true(stillExact(seen, gen(5), ['d0', 'd1']));
  t.false(stillExact(seen, gen(6), ['d1']), 'something was committed since');
  t.false(stillExact(seen, gen(5, '8'), ['d1']), 'another namespace');
  t.false(stillExact(seen, gen(5), ['d0']), 'other rules wanted now');
  t.false(stillExact(seen, undefined, ['d1']), 'no reading');
  for (const bad of [undefined, null, 'x', 5, {}, { gen: '5', netnsCookie: '7', digest: 'd1' }, { gen: 5.5, netnsCookie: '7', digest: 'd1' }, { gen: 5, netnsCookie: 7, digest: 'd1' }, { gen: 5, netnsCookie: '7' }]) {
    t.false(isRulesSeen(bad));
    t.false(stillExact(bad, gen(5), ['d1', undefined as unknown as string]), JSON.stringify(bad));
  }
});

test('an install proves its rules only when its own commits, and nothing else, moved the generation', (t) => {
  t.deepEqual(provenSeen(gen(3), gen(5), 2, 'd'), { ...gen(5), digest: 'd' });
  t.deepEqual(provenSeen(gen(3), gen(3), 0, 'd'), { ...gen(3), digest: 'd' }, 'a read-back: nothing committed');
  t.is(provenSeen(gen(3), gen(6), 2, 'd'), undefined, 'another writer');
  t.is(provenSeen(gen(3), gen(4), 2, 'd'), undefined, 'fewer than ours');
  t.is(provenSeen(gen(3), gen(5, '9'), 2, 'd'), undefined, 'another namespace');
  t.is(provenSeen(undefined, gen(5), 2, 'd'), undefined);
  t.is(provenSeen(gen(3), undefined, 2, 'd'), undefined);
  // The kernel's counter is 32 bits and skips 0.
  t.is(nextGeneration(0xfffffffe), 0xffffffff);
  t.is(nextGeneration(0xffffffff), 1);
  t.deepEqual(provenSeen(gen(0xffffffff), gen(2), 2, 'd'), { ...gen(2), digest: 'd' });
});

test('sameSeen compares every field', (t) => {
  const a = { ...gen(5), digest: 'd' };
  t.true(sameSeen(a, { ...a }));
  t.true(sameSeen(undefined, undefined));
  t.false(sameSeen(a, undefined));
  t.false(sameSeen(a, { ...a, gen: 6 }));
  t.false(sameSeen(a, { ...a, netnsCookie: '8' }));
  t.false(sameSeen(a, { ...a, digest: 'e' }));
});
