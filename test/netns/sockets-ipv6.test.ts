// platform/sockets.ts over IPv6, in throwaway network namespaces of the test's own (nothing else is touched): an
// IPv6-only listener beside the IPv4 one on the same port, dials by family, REDIRECT's original destination through
// ip6tables (and iptables, unchanged), a transparent socket bound to a non-local IPv6 client address, listenerFacts.
import net from 'node:net';
import type { ExecutionContext } from 'ava';
import {
  AF_INET, AF_INET6, IPV6_TRANSPARENT, IPV6_V6ONLY, SOCK_STREAM, SOL_IPV6, bind, close, getsockname, getsockoptBuf,
  parseSockaddrIn6, sockaddrIn6, socket,
} from '../../agent/src/platform/libc.js';
import { withNetns } from '../../agent/src/platform/netns.js';
import { dialFrom, listenIn, listenerFacts, originalDst, serverFd, transparentSocket } from '../../agent/src/platform/sockets.js';
import { netnsTest } from '../testbed/ava.js';
import { scratchNetns, type ScratchNetns } from './scratch-netns.js';

/** Bound on every wait: only there so that a stuck promise fails instead of hanging. */
const WAIT_MS = 10_000;
/** The namespace's own IPv6 address (on a veth whose both ends live in the namespace) and a client address it lacks. */
const LOCAL6 = 'fd00:5::1';
const CLIENT6 = 'fd00:99::5';

type Bed = ScratchNetns;

/** A fresh namespace (lo up, so ::1 and 127.0.0.1) with a veth pair inside it, gone after the test (scratchNetns). */
async function bed(t: ExecutionContext): Promise<Bed> {
  // Both veth ends inside the namespace: they go with it. nodad: the addresses are usable at once.
  return scratchNetns(t, 'amb-s6', async (run) => {
    await run('ip', 'link', 'add', 'amb-v6a', 'type', 'veth', 'peer', 'name', 'amb-v6b');
    await run('ip', 'link', 'set', 'amb-v6a', 'up');
    await run('ip', 'link', 'set', 'amb-v6b', 'up');
    await run('ip', '-6', 'addr', 'add', `${LOCAL6}/64`, 'dev', 'amb-v6a', 'nodad');
    await run('ip', 'addr', 'add', '10.5.0.1/24', 'dev', 'amb-v6a');
  });
}

/** Connections a listener accepted, taken one at a time (each within WAIT_MS); `all` of them, to destroy at the end. */
function acceptor(): { onConnection: (s: net.Socket) => void; next: () => Promise<net.Socket>; all: net.Socket[] } {
  const queued: net.Socket[] = [];
  const waiting: Array<(s: net.Socket) => void> = [];
  const all: net.Socket[] = [];
  return {
    all,
    onConnection: (s) => {
      s.on('error', () => undefined);
      all.push(s);
      const w = waiting.shift();
      if (w) w(s);
      else queued.push(s);
    },
    next: () => {
      const s = queued.shift();
      if (s) return Promise.resolve(s);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('no connection accepted in time')), WAIT_MS);
        waiting.push((c) => {
          clearTimeout(timer);
          resolve(c);
        });
      });
    },
  };
}

async function serve(t: ExecutionContext, b: Bed, opts: Parameters<typeof listenIn>[1]): Promise<{ server: net.Server; next: () => Promise<net.Socket> }> {
  const acc = acceptor();
  const server = await listenIn(b.ns, opts, acc.onConnection);
  // The accepted sockets first: close() waits for every one of them to end.
  t.teardown(() => new Promise<void>((resolve) => {
    acc.all.forEach((s) => s.destroy());
    server.close(() => resolve());
  }));
  return { server, next: acc.next };
}

async function dial(t: ExecutionContext, b: Bed, opts: Omit<Parameters<typeof dialFrom>[1], 'mark'> & { mark?: number }): Promise<net.Socket> {
  const s = await dialFrom(b.ns, { mark: 0, timeoutMs: WAIT_MS, ...opts });
  t.teardown(() => s.destroy());
  return s;
}

const intOpt = (fd: number, level: number, name: number): number => getsockoptBuf(fd, level, name, 4, 'test').readInt32LE(0);

netnsTest('IPv6: a `::` listener (IPv6-only) beside 0.0.0.0 on the same port; each family reaches its own; listenerFacts', async (t) => {
  const b = await bed(t);
  const v4 = await serve(t, b, { address: '0.0.0.0', port: 15006 });
  const v6 = await serve(t, b, { address: '::', port: 15006, transparent: true });

  const fd6 = serverFd(v6.server);
  const fd4 = serverFd(v4.server);
  if (fd6 === undefined || fd4 === undefined) throw new Error('listeners have no fd');
  t.is(intOpt(fd6, SOL_IPV6, IPV6_V6ONLY), 1, 'IPV6_V6ONLY: what lets it share the port with the IPv4 listener');
  t.is(intOpt(fd6, SOL_IPV6, IPV6_TRANSPARENT), 1, 'IPV6_TRANSPARENT on a transparent IPv6 listener');
  t.like(listenerFacts(fd6), { domain: AF_INET6, type: SOCK_STREAM, listening: true, local: { address: '::', port: 15006 }, netns: b.ns.id });
  t.like(listenerFacts(fd4), { domain: AF_INET, type: SOCK_STREAM, listening: true, local: { address: '0.0.0.0', port: 15006 }, netns: b.ns.id });

  const c6 = await dial(t, b, { host: '::1', port: 15006 });
  const a6 = await v6.next();
  t.is(a6.remoteAddress, '::1');
  t.is(a6.remotePort, c6.localPort);
  t.deepEqual(originalDst(a6, 'ipv6'), { address: '::1', port: 15006 }, 'not NATed: the local address');

  const c6b = await dial(t, b, { host: 'FD00:5:0::1', port: 15006 });
  t.is(c6b.remoteAddress, LOCAL6, 'the host is dialled in its canonical form');
  t.is((await v6.next()).remoteAddress, LOCAL6);

  const c4 = await dial(t, b, { host: '127.0.0.1', port: 15006 });
  t.is((await v4.next()).remotePort, c4.localPort, 'IPv4 reaches the IPv4 listener');
  const mapped = await dial(t, b, { host: '::ffff:127.0.0.1', port: 15006 });
  t.is(mapped.remoteAddress, '127.0.0.1', 'an IPv4-mapped host is dialled as the IPv4 address it is');
  t.is((await v4.next()).remotePort, mapped.localPort, 'and reaches the IPv4 listener, never the IPv6-only one');

  await t.throwsAsync(dialFrom(b.ns, { host: '::1', port: 15006, mark: 0, source: { address: '10.5.0.7' } }), { message: /same address family/ });
  await t.throwsAsync(dialFrom(b.ns, { host: 'fe80::1%amb-v6a', port: 15006, mark: 0 }), { message: /not an IP address/ });
});

netnsTest('IPv6: REDIRECT by ip6tables, and originalDst gives the [address]:port the client meant (IPv4 through iptables as before)', async (t) => {
  const b = await bed(t);
  const v4 = await serve(t, b, { address: '0.0.0.0', port: 15001 });
  const v6 = await serve(t, b, { address: '::', port: 15001 });
  // Addresses on the veth's subnets that nobody holds: only the REDIRECT rules make these connections succeed.
  await b.run('ip6tables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', 'fd00:5::9', '--dport', '8080', '-j', 'REDIRECT', '--to-ports', '15001');
  await b.run('iptables', '-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', '10.5.0.9', '--dport', '8080', '-j', 'REDIRECT', '--to-ports', '15001');

  const c6 = await dial(t, b, { host: 'fd00:5::9', port: 8080 });
  const a6 = await v6.next();
  t.is(a6.remotePort, c6.localPort);
  t.deepEqual(originalDst(a6, 'ipv6'), { address: 'fd00:5::9', port: 8080 }, 'IP6T_SO_ORIGINAL_DST');
  t.is(a6.localAddress, '::1', 'REDIRECT from the namespace itself lands on ::1');

  const c4 = await dial(t, b, { host: '10.5.0.9', port: 8080 });
  const a4 = await v4.next();
  t.is(a4.remotePort, c4.localPort);
  t.deepEqual(originalDst(a4), { address: '10.5.0.9', port: 8080 }, 'SO_ORIGINAL_DST, as before');
});

netnsTest('IPv6: a transparent socket binds a non-local client address (IPV6_TRANSPARENT; refused without it) and connects from it', async (t) => {
  const b = await bed(t);
  // Without IPV6_TRANSPARENT an address the namespace lacks cannot be bound.
  const bare = withNetns(b.ns, () => socket(AF_INET6, SOCK_STREAM));
  t.teardown(() => close(bare));
  t.like(t.throws(() => bind(bare, sockaddrIn6(CLIENT6, 0))), { errnoName: 'EADDRNOTAVAIL' });

  // With it: bound now, the port left to connect() (IP_BIND_ADDRESS_NO_PORT, a SOL_IP option IPv6 sockets honour).
  const noPort = withNetns(b.ns, () => transparentSocket(CLIENT6, 0));
  t.teardown(() => close(noPort));
  t.deepEqual(parseSockaddrIn6(getsockname(noPort)), { address: CLIENT6, port: 0, scopeId: 0 });
  t.is(intOpt(noPort, SOL_IPV6, IPV6_TRANSPARENT), 1);
  const avoid = withNetns(b.ns, () => transparentSocket(CLIENT6, 0, 40000));
  t.teardown(() => close(avoid));
  const bound = parseSockaddrIn6(getsockname(avoid)).port;
  t.true(bound !== 0 && bound !== 40000, `with avoidPort the port is bound at once, never that one (${bound})`);

  // The server's replies to the client address come back to the socket: a local route for it, as reply-routing sets up
  // for pods (there by mark; here by destination, since the test's server is in the same namespace).
  await b.run('ip', '-6', 'route', 'add', 'local', 'fd00:99::/64', 'dev', 'lo', 'table', '100');
  await b.run('ip', '-6', 'rule', 'add', 'to', 'fd00:99::/64', 'lookup', '100', 'pref', '100');
  const app = await serve(t, b, { address: LOCAL6, port: 9000 });
  const up = await dial(t, b, { host: LOCAL6, port: 9000, mark: 0x539, source: { address: CLIENT6 } });
  const seen = await app.next();
  t.is(seen.remoteAddress, CLIENT6, 'the app sees the client address, not the namespace\'s own');
  t.is(seen.remotePort, up.localPort);
  t.is(up.localAddress, CLIENT6);
  const echoed = new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no reply in time')), WAIT_MS);
    up.once('data', (d: Buffer) => {
      clearTimeout(timer);
      resolve(d.toString());
    });
  });
  seen.write('pong');
  t.is(await echoed, 'pong', 'the reply came back to the transparent socket');
});
