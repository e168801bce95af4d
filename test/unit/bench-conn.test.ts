// The connection-cost benchmark's arithmetic: CPU per connection and per request net of each thread's idle rate, rates,
// and the stunnel pair's figures. Pure parts of scripts/bench/conn.ts; the benchmark itself runs against the testbed.
import test from 'ava';
import { connFigures, type ConnPathResult, type ConnResult } from '../../scripts/bench/conn.js';

const threads = (main: number, relay: number, other: number) => ({ main, relay, other });
/** A phase of `wallS` seconds in which each agent's threads used these CPU seconds, and each stunnel `st`. */
const cpu = (wallS: number, a: [number, number, number], b: [number, number, number], st: [number, number] = [0, 0]) => ({
  threads: [threads(...a), threads(...b)] as [ReturnType<typeof threads>, ReturnType<typeof threads>],
  stunnelS: st,
  wallS,
});

test('CPU per connection and per request is net of each thread\'s idle rate; rates are connections over wall time', (t) => {
  // Idle: 1 % of a core on each agent's main thread, nothing else (10 s of direct phases).
  const idleCpu = cpu(5, [0.05, 0, 0], [0.05, 0, 0]);
  const direct: ConnPathResult = {
    serialUs: [100, 200, 300],
    serialCpu: [idleCpu],
    rate: [{ conns: 2000, failed: 0, wallS: 2, cpu: idleCpu, p50Us: 500 }],
    persistent: [{ rounds: 1000, cpu: cpu(0, [0, 0, 0], [0, 0, 0]), p50Us: 90 }],
  };
  const mesh: ConnPathResult = {
    serialUs: [1100, 1200, 1300, 1400],
    // 4 timed connections and 3 untimed ones (SERIAL_EXTRA) in 1 s: main 0.01 (idle) + 0.007, relay 0.0035.
    serialCpu: [cpu(1, [0.017, 0.0035, 0], [0.018, 0.001, 0.001])],
    rate: [{ conns: 1000, failed: 3, wallS: 2, cpu: cpu(2, [0.52, 0.2, 0.1], [0.62, 0.3, 0.1]), p50Us: 900 }],
    persistent: [{ rounds: 2000, cpu: cpu(1, [0.01, 0.2, 0], [0.01, 0.1, 0]), p50Us: 250 }],
  };
  const stunnel: ConnPathResult = {
    serialUs: [5000], serialCpu: [cpu(1, [0.01, 0, 0], [0.01, 0, 0], [0.2, 0.3])],
    rate: [{ conns: 300, failed: 0, wallS: 3, cpu: cpu(3, [0.03, 0, 0], [0.03, 0, 0]), p50Us: 4000 }],
    persistent: [{ rounds: 2000, cpu: cpu(1, [0.01, 0, 0], [0.01, 0, 0], [0.24, 0.2]), p50Us: 260 }],
  };
  const r: ConnResult = { mode: 'iptables', paths: { direct, mesh, stunnel }, pool: { streams: 1004, dialled: 0 }, stunnel: 'TLSv1.3' };
  const f = connFigures(r);
  t.is(f.serial.mesh.p50, 1250);
  t.is(f.addedP50Us, 1250 - 200);
  t.deepEqual(f.idleCpuPct.map((x) => +x.toFixed(6)), [1, 1]);
  t.is(+f.cpuPerConnMs[0].main.toFixed(6), 1); // (0.017 - 0.01 × 1 s) / 7 connections = 1 ms
  t.is(+f.cpuPerConnMs[0].relay.toFixed(6), 0.5);
  t.is(+f.cpuPerConnRateMs[1].main.toFixed(6), 0.6); // (0.62 - 0.01 × 2 s) / 1,000
  t.is(f.ratePerS.mesh, 500);
  t.is(f.ratePerS.direct, 1000);
  t.is(f.rateFailed.mesh, 3);
  // Per request: client (0.01 - 0.01 + 0.2) / 2,000 = 0.1 ms, server 0.05 ms; 0.15 ms per request = 0.15 vCPU at 1,000/s.
  t.is(+f.vcpuPer1kRps.toFixed(6), 0.15);
  t.is(+f.stunnelVcpuPer1kRps.toFixed(6), 0.22);
  t.is(f.persistentP50Us.mesh, 250);
});
