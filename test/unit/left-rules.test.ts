// The bounded memory of namespaces a DEL left rules in: at most `limit` entries, the least recently remembered out first.
import test from 'ava';
import { LEFT_RULES_LIMIT, LeftRulesMemory } from '../../agent/src/reconcile/left-rules.js';

const id = (inode: number, dev = 4): { inode: number; dev: number } => ({ inode, dev });
const LEFT = { backend: 'iptables', ifname: 'eth0' };

test('remembers by device and inode, and forgets', (t) => {
  const m = new LeftRulesMemory();
  m.remember(id(1), LEFT);
  t.true(m.has(id(1)));
  t.false(m.has(id(1, 5)), 'another device is another namespace');
  t.deepEqual(m.get(id(1)), LEFT);
  m.forget(id(1));
  t.false(m.has(id(1)));
  t.is(m.get(id(1)), undefined);
  m.forget(id(2)); // unknown: harmless
  t.is(m.size, 0);
});

test('never holds more than its limit: the least recently remembered goes first', (t) => {
  const m = new LeftRulesMemory(3);
  for (const i of [1, 2, 3]) m.remember(id(i), LEFT);
  m.remember(id(1), { backend: 'nftables', ifname: 'eth0' }); // refreshed: now the newest
  m.remember(id(4), LEFT);
  t.is(m.size, 3);
  t.false(m.has(id(2)), 'the oldest went');
  t.true(m.has(id(1)) && m.has(id(3)) && m.has(id(4)));
  t.is(m.get(id(1))?.backend, 'nftables');
});

test('the default bound holds under churn', (t) => {
  const m = new LeftRulesMemory();
  for (let i = 0; i < LEFT_RULES_LIMIT * 2 + 7; i++) m.remember(id(i), LEFT);
  t.is(m.size, LEFT_RULES_LIMIT);
  t.false(m.has(id(LEFT_RULES_LIMIT + 6)));
  t.true(m.has(id(LEFT_RULES_LIMIT * 2 + 6)));
});

test('a limit must be a positive integer', (t) => {
  t.throws(() => new LeftRulesMemory(0), { instanceOf: RangeError });
  t.throws(() => new LeftRulesMemory(1.5), { instanceOf: RangeError });
});
