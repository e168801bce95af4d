#!/usr/bin/env node
// Request/response latency probe run inside pod namespaces by the benchmark: an echo server, and a client that
// times 1 KiB round trips on one connection and new-connection setup. Plain JS so it starts fast; prints one JSON line.
import net from 'node:net';

const [mode, ...rest] = process.argv.slice(2);
const arg = (name, dflt) => {
  const i = rest.indexOf(`--${name}`);
  return i >= 0 ? rest[i + 1] : dflt;
};

function pct(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function summary(samplesNs) {
  const us = samplesNs.map((n) => Number(n) / 1000).sort((a, b) => a - b);
  return { n: us.length, p50_us: +pct(us, 50).toFixed(1), p99_us: +pct(us, 99).toFixed(1), mean_us: +(us.reduce((a, b) => a + b, 0) / us.length).toFixed(1) };
}

if (mode === 'server') {
  const port = Number(arg('port', '7000'));
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  server.listen(port, '0.0.0.0', () => process.stdout.write(`listening ${port}\n`));
  const stopAfter = Number(arg('seconds', '600'));
  setTimeout(() => process.exit(0), stopAfter * 1000).unref();
} else if (mode === 'client') {
  const host = arg('host');
  const port = Number(arg('port', '7000'));
  const rounds = Number(arg('rounds', '2000'));
  const conns = Number(arg('conns', '200'));
  const size = Number(arg('size', '1024'));
  const msg = Buffer.alloc(size, 0x61);

  const connect = () => new Promise((resolve, reject) => {
    const s = net.connect({ host, port, noDelay: true }, () => resolve(s));
    s.once('error', reject);
  });

  const roundTrip = (s) => new Promise((resolve, reject) => {
    let got = 0;
    const t0 = process.hrtime.bigint();
    const onData = (d) => {
      got += d.length;
      if (got >= size) {
        s.off('data', onData);
        resolve(process.hrtime.bigint() - t0);
      }
    };
    s.on('data', onData);
    s.once('error', reject);
    s.write(msg);
  });

  const rr = [];
  const s = await connect();
  for (let i = 0; i < 200; i++) await roundTrip(s); // warm-up
  for (let i = 0; i < rounds; i++) rr.push(await roundTrip(s));
  s.destroy();

  const setup = [];
  for (let i = 0; i < conns; i++) {
    const t0 = process.hrtime.bigint();
    const c = await connect();
    await roundTrip(c);
    setup.push(process.hrtime.bigint() - t0);
    c.destroy();
  }
  process.stdout.write(`${JSON.stringify({ persistent: summary(rr), newConnection: summary(setup) })}\n`);
} else {
  process.stderr.write('usage: rr.mjs server [--port P] [--seconds S] | client --host H [--port P] [--rounds N] [--conns N] [--size B]\n');
  process.exit(2);
}
