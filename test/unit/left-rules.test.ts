// The bounded memory of namespaces a DEL left rules in: at most `limit` entries, the least recently remembered out first.
import test from 'ava';
import { LEFT_RULES_LIMIT, LeftRulesMemory } from '../../agent/src/reconcile/left-rules.js';

const id = (inode: number, dev = 4): { inode: number; dev: number } => ({ inode, dev });
const LEFT = { containerId: 'sandbox-1', backend: 'iptables', ifname: 'eth0' };
const C = LEFT.containerId;

test('remembers by device and inode, and forgets', (t) => {
  const m = new LeftRulesMemory();
  m.remember(id(1), LEFT);
  t.true(m.has(id(1), C));
  t.false(m.has(id(1, 5), C), 'another device is another namespace');
  t.deepEqual(m.get(id(1), C), LEFT);
  m.forget(id(1));
  t.false(m.has(id(1), C));
  t.is(m.get(id(1), C), undefined);
  m.forget(id(2)); // unknown: harmless
  t.is(m.size, 0);
});

test('a namespace is matched only for the sandbox that left the rules (a new sandbox may get a freed inode)', (t) => {
  const m = new LeftRulesMemory();
  m.remember(id(1), LEFT);
  t.false(m.has(id(1), 'sandbox-2'));
  t.is(m.get(id(1), 'sandbox-2'), undefined);
  t.true(m.has(id(1), C));
});

test('never holds more than its limit: the least recently remembered goes first', (t) => {
  const m = new LeftRulesMemory(3);
  for (const i of [1, 2, 3]) m.remember(id(i), LEFT);
  m.remember(id(1), { containerId: C, backend: 'nftables', ifname: 'eth0' }); // refreshed: now the newest
  m.remember(id(4), LEFT);
  t.is(m.size, 3);
  t.false(m.has(id(2), C), 'the oldest went');
  t.true(m.has(id(1), C) && m.has(id(3), C) && m.has(id(4), C));
  t.is(m.get(id(1), C)?.backend, 'nftables');
});

test('the default bound holds under churn', (t) => {
  const m = new LeftRulesMemory();
  for (let i = 0; i < LEFT_RULES_LIMIT * 2 + 7; i++) m.remember(id(i), LEFT);
  t.is(m.size, LEFT_RULES_LIMIT);
  t.false(m.has(id(LEFT_RULES_LIMIT + 6), C));
  t.true(m.has(id(LEFT_RULES_LIMIT * 2 + 6), C));
});

test('a limit must be a positive integer', (t) => {
  t.throws(() => new LeftRulesMemory(0), { instanceOf: RangeError });
  t.throws(() => new LeftRulesMemory(1.5), { instanceOf: RangeError });
});
