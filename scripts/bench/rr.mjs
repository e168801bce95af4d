#!/usr/bin/env node
// Request/response latency probe the benchmark runs inside pod namespaces: an echo server, and a client timing 1 KiB round trips on
// one connection and new-connection setup (also connect() alone: the handshake, which redirection answers in the pod); and
// bulk bursts into a sink. Plain JS so it starts fast; prints one JSON line per host (µs; --raw adds every sample for pooling).
import net from 'node:net';

const [mode, ...rest] = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = rest.indexOf(`--${name}`);
  return i >= 0 ? rest[i + 1] : dflt;
};

/** Linear interpolation between closest ranks (the same definition the benchmark uses for ADD latency). */
function pct(sorted, p) {
  const idx = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(idx);
  const hi = Math.min(sorted.length - 1, lo + 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (idx - lo);
}

function summary(samplesNs) {
  if (samplesNs.length === 0) return { n: 0 };
  const us = samplesNs.map((n) => Number(n) / 1000).sort((a, b) => a - b);
  const r = (x) => +x.toFixed(1);
  return {
    n: us.length,
    min_us: r(us[0]),
    p50_us: r(pct(us, 50)),
    p90_us: r(pct(us, 90)),
    p99_us: r(pct(us, 99)),
    max_us: r(us[us.length - 1]),
    mean_us: r(us.reduce((a, b) => a + b, 0) / us.length),
  };
}

/**
 * A TCP connection to host:port, resolved once connected; with `timeoutMs`, destroyed (and rejected) if not connected
 * by then. One 'error' listener, removed once connected.
 */
const connectTo = (host, port, { noDelay = true, timeoutMs } = {}) =>
  new Promise((resolve, reject) => {
    const s = net.connect({ host, port, noDelay }, () => {
      clearTimeout(timer);
      s.off('error', reject);
      resolve(s);
    });
    const timer = timeoutMs === undefined ? undefined : setTimeout(() => s.destroy(new Error(`no connection in ${timeoutMs} ms`)), timeoutMs);
    s.once('error', reject);
  });

/**
 * One round trip on `s`: write `msg`, resolve with the ns it took once as many bytes came back. One 'data', 'error' and
 * 'close' listener per call, all removed when it settles (no listener pile-up over thousands of rounds).
 */
const roundTrip = (s, msg) =>
  new Promise((resolve, reject) => {
    let got = 0;
    const done = (err, v) => {
      s.off('data', onData);
      s.off('error', onError);
      s.off('close', onClose);
      if (err) reject(err);
      else resolve(v);
    };
    const onData = (d) => {
      got += d.length;
      if (got >= msg.length) done(undefined, process.hrtime.bigint() - t0);
    };
    const onError = (e) => done(e);
    const onClose = () => done(new Error(`connection closed after ${got} of ${msg.length} bytes`));
    s.on('data', onData);
    s.on('error', onError);
    s.on('close', onClose);
    const t0 = process.hrtime.bigint();
    s.write(msg);
  });

if (mode === 'server') {
  const port = Number(arg('port', '7000'));
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  // '::' for a dual-stack pod (IPv4 and IPv6 on one socket); the default stays IPv4 for pods that may have no IPv6.
  server.listen(port, arg('listen', '0.0.0.0'), () => process.stdout.write(`listening ${port}\n`));
  // --sink-port: also a bulk sink there, answering one byte per --chunk-mib MiB received (what `bulk` clients wait for).
  const sinkPort = arg('sink-port');
  if (sinkPort !== undefined) {
    const chunk = Number(arg('chunk-mib', '8')) * 1024 * 1024;
    const ack = Buffer.from('k');
    net.createServer((s) => {
      let got = 0;
      s.on('error', () => s.destroy());
      s.on('data', (d) => {
        got += d.length;
        for (; got >= chunk; got -= chunk) s.write(ack);
      });
    }).listen(Number(sinkPort), arg('listen', '0.0.0.0'));
  }
  const stopAfter = Number(arg('seconds', '600'));
  setTimeout(() => process.exit(0), stopAfter * 1000).unref();
} else if (mode === 'client') {
  // Several hosts (comma-separated, e.g. a server's IPv4 and IPv6 addresses): their round trips and new connections are
  // interleaved one by one, the order turning each time, so drift on the machine falls on every host alike.
  const hosts = (arg('host') ?? '').split(',').filter(Boolean);
  const port = Number(arg('port', '7000'));
  const rounds = Number(arg('rounds', '2000'));
  const conns = Number(arg('conns', '200'));
  const warmup = Number(arg('warmup', '200'));
  const connWarmup = Number(arg('conn-warmup', '5'));
  const size = Number(arg('size', '1024'));
  const raw = rest.includes('--raw');
  const msg = Buffer.alloc(size, 0x61);
  if (hosts.length === 0) {
    process.stderr.write('rr client: --host is required\n');
    process.exit(2);
  }
  /** The hosts in the order of turn i (rotated by one each turn). */
  const turn = (i) => hosts.map((_, k) => (k + i) % hosts.length);

  const connect = (host) => connectTo(host, port);

  const rr = hosts.map(() => []);
  const persistent = [];
  for (const h of hosts) persistent.push(await connect(h));
  for (let i = 0; i < warmup; i++) for (const k of turn(i)) await roundTrip(persistent[k], msg);
  for (let i = 0; i < rounds; i++) for (const k of turn(i)) rr[k].push(await roundTrip(persistent[k], msg));
  for (const s of persistent) s.destroy();

  // New connections, not timed first: whatever pools or caches the path keeps (the HBONE pool, TLS sessions) are warm.
  for (let i = 0; i < connWarmup; i++) {
    for (const h of hosts) {
      const c = await connect(h);
      await roundTrip(c, msg);
      c.destroy();
    }
  }
  const setup = hosts.map(() => []);
  const connectOnly = hosts.map(() => []);
  for (let i = 0; i < conns; i++) {
    for (const k of turn(i)) {
      const t0 = process.hrtime.bigint();
      const c = await connect(hosts[k]);
      connectOnly[k].push(process.hrtime.bigint() - t0);
      await roundTrip(c, msg);
      setup[k].push(process.hrtime.bigint() - t0);
      c.destroy();
    }
  }
  const results = hosts.map((_, k) => {
    const out = { size, persistent: summary(rr[k]), newConnection: summary(setup[k]), connect: summary(connectOnly[k]) };
    if (raw) {
      const us = (a) => a.map((n) => +(Number(n) / 1000).toFixed(1));
      out.samples_us = { persistent: us(rr[k]), newConnection: us(setup[k]), connect: us(connectOnly[k]) };
    }
    return out;
  });
  // One host: its figures as the line; several: one line per host, in --host order.
  for (const out of results) process.stdout.write(`${JSON.stringify(hosts.length > 1 ? { host: hosts[results.indexOf(out)], ...out } : out)}\n`);
} else if (mode === 'rate') {
  // New connections as fast as --concurrency workers can make them for --seconds: each connects, does one --size round
  // trip, closes. Prints how many completed (and failed), and every completed one's connect-to-answer time (µs).
  const host = arg('host');
  const port = Number(arg('port', '7000'));
  const concurrency = Number(arg('concurrency', '16'));
  const seconds = Number(arg('seconds', '5'));
  const size = Number(arg('size', '64'));
  const msg = Buffer.alloc(size, 0x61);
  if (host === undefined) {
    process.stderr.write('rr rate: --host is required\n');
    process.exit(2);
  }
  /** One new connection and its first round trip, µs; within 10 s of starting, else it fails. */
  const once = async () => {
    const t0 = process.hrtime.bigint();
    const s = await connectTo(host, port, { timeoutMs: 10_000 });
    const timer = setTimeout(() => s.destroy(new Error('no answer in 10 s')), 10_000);
    try {
      await roundTrip(s, msg);
      return Number(process.hrtime.bigint() - t0) / 1000;
    } finally {
      clearTimeout(timer);
      s.destroy();
    }
  };
  const samples = [];
  let failed = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end) {
      try {
        samples.push(await once());
      } catch {
        failed++;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  const wallS = (performance.now() - t0) / 1000;
  process.stdout.write(`${JSON.stringify({ host, concurrency, conns: samples.length, failed, wallS, samples_us: samples.map((x) => +x.toFixed(1)) })}\n`);
} else if (mode === 'bulk') {
  // Bulk throughput to several hosts of one sink (rr.mjs server --sink-port): one connection per host, bursts of
  // --chunk-mib MiB sent to each in turn (the order turning each time), each timed until the sink's one-byte answer.
  const hosts = (arg('host') ?? '').split(',').filter(Boolean);
  const port = Number(arg('port', '7001'));
  const chunk = Number(arg('chunk-mib', '8')) * 1024 * 1024;
  const bursts = Number(arg('bursts', '16'));
  const warmup = Number(arg('warmup', '2'));
  if (hosts.length === 0) {
    process.stderr.write('rr bulk: --host is required\n');
    process.exit(2);
  }
  const data = Buffer.alloc(chunk, 0x62);
  const connect = (host) => connectTo(host, port, { noDelay: false });
  /** One burst: Gbit/s from the first byte written to the sink's answer. */
  const burst = (s) =>
    new Promise((resolve, reject) => {
      const t0 = process.hrtime.bigint();
      const done = (err) => {
        s.off('data', onData);
        s.off('error', done);
        if (err) reject(err);
        else resolve((chunk * 8) / Number(process.hrtime.bigint() - t0));
      };
      const onData = () => done();
      s.on('data', onData);
      s.on('error', done);
      s.write(data);
    });
  const socks = [];
  for (const h of hosts) socks.push(await connect(h));
  const gbps = hosts.map(() => []);
  for (let i = 0; i < warmup + bursts; i++) {
    for (let j = 0; j < hosts.length; j++) {
      const k = (j + i) % hosts.length;
      const v = await burst(socks[k]);
      if (i >= warmup) gbps[k].push(+v.toFixed(4));
    }
  }
  for (const s of socks) s.destroy();
  for (let k = 0; k < hosts.length; k++) process.stdout.write(`${JSON.stringify({ host: hosts[k], chunk, gbps: gbps[k] })}\n`);
} else {
  process.stderr.write(
    'usage: rr.mjs server [--port P] [--listen ADDR] [--seconds S] [--sink-port P2 [--chunk-mib M]] | bulk --host H[,H2...] [--port P2] [--chunk-mib M] [--bursts N] [--warmup N] | rate --host H [--port P] [--concurrency C] [--seconds S] [--size B] | client --host H[,H2...] [--port P] [--rounds N] [--conns N] [--warmup N] [--conn-warmup N] [--size B] [--raw]\n',
  );
  process.exit(2);
}
