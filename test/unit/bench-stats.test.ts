// The benchmark's paired-block statistics (scripts/bench/stats.ts): block ratios, the sign-test interval of their
// median, and the met / missed / cannot-tell verdict against a "no more than x % apart" goal.
import test from 'ava';
import { burstThroughput, medianCi, pairedRatios, ratioVerdict, verdictLine } from '../../scripts/bench/stats.js';

test('paired ratios divide block i by block i and leave out pairs without a usable figure', (t) => {
  t.deepEqual(pairedRatios([100, 200, 0, Number.NaN, 50], [110, 180, 5, 10]), [1.1, 0.9]);
});

test('the sign-test interval: no interval below 6 blocks, min and max at 6, the 4th smallest and largest at 16', (t) => {
  const five = medianCi([1, 2, 3, 4, 5]);
  t.is(five.level, 0);
  t.true(Number.isNaN(five.lo));
  t.is(five.median, 3);
  const six = medianCi([6, 1, 5, 2, 4, 3]);
  t.deepEqual([six.lo, six.hi, six.median], [1, 6, 3.5]);
  t.is(six.level, 1 - 2 / 64, 'P(all six on one side) = 2/64');
  const sixteen = medianCi(Array.from({ length: 16 }, (_, i) => 16 - i));
  t.deepEqual([sixteen.lo, sixteen.hi], [4, 13]);
  t.true(sixteen.level >= 0.95 && sixteen.level < 0.98);
});

test('the verdict: met inside, missed wholly outside, cannot tell across the limit or without an interval', (t) => {
  const ci = (lo: number, hi: number): ReturnType<typeof medianCi> => ({ n: 10, median: (lo + hi) / 2, lo, hi, level: 0.97 });
  t.is(ratioVerdict(ci(0.97, 1.04), 0.05), 'met');
  t.is(ratioVerdict(ci(1.06, 1.2), 0.05), 'missed');
  t.is(ratioVerdict(ci(0.8, 0.94), 0.05), 'missed');
  t.is(ratioVerdict(ci(1.01, 1.08), 0.05), 'cannot tell');
  t.is(ratioVerdict(medianCi([1, 1, 1]), 0.05), 'cannot tell', 'too few blocks');
  t.regex(verdictLine('a and b within 5 %', [{ name: 'rr', ci: ci(0.99, 1.01) }, { name: 'tp', ci: ci(1.01, 1.08) }], 0.05, '--blocks'), /\*\*NOT RESOLVED\*\*: tp 1\.04x \[1\.01–1\.08\].*--blocks/);
  t.regex(verdictLine('g', [{ name: 'rr', ci: ci(1.06, 1.1) }, { name: 'tp', ci: ci(1.01, 1.08) }], 0.05, '--blocks'), /\*\*MISSED\*\* \(rr 1\.08x/);
  t.regex(verdictLine('g', [{ name: 'rr', ci: ci(0.99, 1.01) }], 0.05, '--blocks'), /\*\*MET\*\*/);
});

test('burst throughput is bits over time: equal bursts at 2 and 6 Gbit/s move at 3, not at their mean or median', (t) => {
  t.is(burstThroughput([2, 6]), 3);
  t.is(burstThroughput([4, 4, 4]), 4);
  t.true(Number.isNaN(burstThroughput([])));
  t.is(burstThroughput([2, Number.NaN, 6, 0]), 3, 'unusable samples are left out');
});
