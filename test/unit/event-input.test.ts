// Hostile input on the agent's event API: pod IP addresses that are not IPs (they reach rule commands) are refused
// when the event is parsed, and a CNI_NETNS that is not a namespace file (a FIFO) is refused without blocking.
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventParseError, parseCniEvent } from '../../agent/src/protocol/cni-event.js';
import { Netns, NetnsGoneError, statNetns } from '../../agent/src/platform/netns.js';

const event = (ips: unknown[]): Record<string, unknown> => ({
  command: 'ADD', cniVersion: '1.0.0', containerId: 'c1', ifname: 'eth0', netns: '/run/netns/x', args: '', k8s: {}, ips, network: 'n',
});

test('pod IPs must be IP addresses with an optional prefix length', (t) => {
  t.deepEqual(parseCniEvent(event([{ address: '10.244.1.5/24' }, { address: 'fd00::5/64' }, { address: '10.0.0.1' }])).ips.map((i) => i.address), ['10.244.1.5/24', 'fd00::5/64', '10.0.0.1']);
  for (const bad of ['10.244.1.5/24; flush ruleset', '10.244.1.5/33', 'fd00::5/129', 'not-an-ip', '10.244.1.5/24/1', '{ }', '10.244.1.256/24']) {
    t.throws(() => parseCniEvent(event([{ address: bad }])), { instanceOf: EventParseError, message: /field "ips\[0\]\.address" must be an IP address/ }, bad);
  }
});

test('a CNI_NETNS that is a FIFO, a regular file or a directory is no namespace: refused at once, never opened blocking', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'amb-netns-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
  const file = join(dir, 'file');
  writeFileSync(file, '');
  for (const p of [fifo, file, dir]) {
    t.is(statNetns(p), undefined, p);
    const started = Date.now();
    t.throws(() => Netns.open(p), { instanceOf: NetnsGoneError }, p);
    t.true(Date.now() - started < 1000, `${p} did not block`);
  }
  t.truthy(statNetns('/proc/self/ns/net'), 'a real namespace file still stats');
});
