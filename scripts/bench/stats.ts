// Benchmark statistics: sample distributions (percentiles by linear interpolation), paired block ratios with sign-test
// intervals, and the number formatting of the report tables. Pure functions only: no I/O, no testbed types; a missing or
// non-finite value prints as 'n/a'.

export interface Dist {
  n: number;
  min: number;
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

/** Linear interpolation between closest ranks. With 50 samples p99 lies between the two largest. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const idx = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(idx);
  const hi = Math.min(sorted.length - 1, lo + 1);
  const a = sorted[lo] ?? Number.NaN;
  const b = sorted[hi] ?? Number.NaN;
  return a + (b - a) * (idx - lo);
}

export function dist(values: number[]): Dist {
  const s = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  return {
    n: s.length,
    min: s[0] ?? Number.NaN,
    p50: percentile(s, 50),
    p90: percentile(s, 90),
    p99: percentile(s, 99),
    max: s[s.length - 1] ?? Number.NaN,
    mean: s.length === 0 ? Number.NaN : s.reduce((x, y) => x + y, 0) / s.length,
  };
}

/** A number with `digits` decimals, 'n/a' for a missing or non-finite one. */
const fixed = (digits: number) => (x: number | undefined): string => (x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits));
export const f0 = fixed(0);
export const f1 = fixed(1);
export const f2 = fixed(2);
export const f3 = fixed(3);
export const ratio = (x: number, base: number): string => (Number.isFinite(x) && Number.isFinite(base) && base > 0 ? `${(x / base).toFixed(2)}x` : 'n/a');
export const signed = (x: number, digits: number): string => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${x.toFixed(digits)}` : 'n/a');
/** "p50 / p99" of a distribution, one decimal. */
export const pm = (d: Dist): string => `${f1(d.p50)} / ${f1(d.p99)}`;
/** max - min: how far apart a set of per-block figures lies (NaN for none). */
export const spread = (xs: number[]): number => (xs.length === 0 ? Number.NaN : Math.max(...xs) - Math.min(...xs));

/**
 * Throughput of equal-sized bursts (Gbit/s each): bits moved over time taken, i.e. their harmonic mean; NaN for none.
 * Not their median: bursts sent first and second in a turn differ, and the median of such a half-and-half sample jumps
 * between the two halves from block to block.
 */
export function burstThroughput(gbps: number[]): number {
  const ok = gbps.filter((g) => Number.isFinite(g) && g > 0);
  return ok.length === 0 ? Number.NaN : ok.length / ok.reduce((t, g) => t + 1 / g, 0);
}

/** Block i of `b` over block i of `a`: the ratios of interleaved blocks measured back to back (pairs with a non-finite or zero side are left out). */
export function pairedRatios(a: number[], b: number[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const [x, y] = [a[i] ?? Number.NaN, b[i] ?? Number.NaN];
    if (Number.isFinite(x) && Number.isFinite(y) && x > 0) out.push(y / x);
  }
  return out;
}

/** A median with a distribution-free confidence interval. `level` is what the interval reaches (0 when none exists). */
export interface MedianCi {
  n: number;
  median: number;
  lo: number;
  hi: number;
  level: number;
}

/**
 * The median of `xs` and the sign-test interval around it: the k-th smallest and k-th largest values, k the largest
 * rank whose binomial(n, 1/2) tail P(X < k) stays at most (1 - level) / 2, so the interval covers the true median with
 * at least `level` (assuming nothing about the distribution but independent blocks). Fewer than 6 values reach no 95 %
 * interval: lo/hi are then NaN and `level` 0.
 */
export function medianCi(xs: number[], level = 0.95): MedianCi {
  const s = xs.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  const n = s.length;
  const median = dist(s).p50;
  let tail = 0; // P(X <= k - 1) for X ~ binomial(n, 1/2), built up term by term
  let term = 0.5 ** n; // P(X = 0)
  let k = 0;
  for (let j = 0; j < n; j++) {
    if (tail + term > (1 - level) / 2) break;
    tail += term;
    term = (term * (n - j)) / (j + 1);
    k = j + 1;
  }
  if (k === 0) return { n, median, lo: Number.NaN, hi: Number.NaN, level: 0 };
  return { n, median, lo: s[k - 1] ?? Number.NaN, hi: s[n - k] ?? Number.NaN, level: 1 - 2 * tail };
}

/** Against a goal "no more than `limit` apart" (|ratio - 1| <= limit): met when the whole interval is inside, missed when all of it is outside. */
export function ratioVerdict(ci: MedianCi, limit: number): 'met' | 'missed' | 'cannot tell' {
  if (!(ci.level > 0)) return 'cannot tell';
  if (ci.lo >= 1 - limit && ci.hi <= 1 + limit) return 'met';
  if (ci.hi < 1 - limit || ci.lo > 1 + limit) return 'missed';
  return 'cannot tell';
}

/** "0.98x [0.95–1.02]" (the median ratio and its interval), or the median alone when there is no interval. */
export const ratioCi = (ci: MedianCi): string => (ci.level > 0 ? `${f2(ci.median)}x [${f2(ci.lo)}–${f2(ci.hi)}]` : `${f2(ci.median)}x [no interval: ${ci.n} blocks]`);

/**
 * The report's line on a goal "no more than `limit` apart" judged by paired block ratios: MET when every figure's
 * interval lies inside 1 ± limit, MISSED when one lies wholly outside, else NOT RESOLVED, naming the option that adds
 * blocks.
 */
export function verdictLine(goal: string, figures: { name: string; ci: MedianCi | undefined }[], limit: number, moreBlocks: string): string {
  const judged = figures.map((x) => ({ ...x, v: x.ci ? ratioVerdict(x.ci, limit) : 'cannot tell' as const }));
  const missed = judged.filter((x) => x.v === 'missed');
  const open = judged.filter((x) => x.v === 'cannot tell');
  const list = (xs: typeof judged): string => xs.map((x) => `${x.name} ${x.ci ? ratioCi(x.ci) : 'n/a'}`).join(', ');
  if (missed.length > 0) return `Target, ${goal}: **MISSED** (${list(missed)}).`;
  if (open.length > 0) return `Target, ${goal}: **NOT RESOLVED**: ${list(open)} reach past ±${limit * 100} % with 95 % confidence; more blocks (${moreBlocks}) narrow the intervals.`;
  return `Target, ${goal}: **MET** (every interval inside ±${limit * 100} %: ${list(judged)}).`;
}
