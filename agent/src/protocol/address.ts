// IP addresses as text, the one place for it: canonical forms (RFC 5952 for IPv6; an IPv4-mapped IPv6 address is its
// IPv4 address), address families, and `host:port` with IPv6 in brackets (formatting and strict parsing). Pure.
// Strict: a plain address only (no zone, brackets, spaces or prefix), whatever else node's isIP lets through.
import { isIPv4, isIPv6 } from 'node:net';

export type IpFamily = 'ipv4' | 'ipv6';

/** An address as numbers: 32 bits for IPv4, 128 for IPv6. */
export interface IpValue {
  family: 4 | 6;
  value: bigint;
}

/**
 * True for the text of a plain IPv6 address: node's isIPv6, minus what it also accepts (a `%zone` suffix). Only hex
 * digits, colons and the dots of a trailing quad, so no zone, bracket, space, sign or prefix length gets through.
 */
function isPlainIPv6(s: string): boolean {
  return /^[0-9a-fA-F:.]+$/.test(s) && isIPv6(s);
}

/** The eight 16-bit words of an IPv6 address already validated by isPlainIPv6, a trailing dotted quad included. */
function v6Words(s: string): number[] {
  let text = s;
  const tail: number[] = [];
  if (s.includes('.')) {
    // `...:a.b.c.d`: the quad is the last two words; what precedes it keeps a `::`, else loses its trailing `:`.
    const colon = s.lastIndexOf(':');
    const o = s.slice(colon + 1).split('.').map(Number);
    tail.push(((o[0] ?? 0) << 8) | (o[1] ?? 0), ((o[2] ?? 0) << 8) | (o[3] ?? 0));
    text = s.endsWith('::', colon + 1) ? s.slice(0, colon + 1) : s.slice(0, colon);
  }
  const parse = (part: string): number[] => (part === '' ? [] : part.split(':').map((w) => parseInt(w, 16)));
  const gap = text.indexOf('::');
  if (gap < 0) return [...parse(text), ...tail];
  const head = parse(text.slice(0, gap));
  const rest = parse(text.slice(gap + 2));
  return [...head, ...new Array<number>(8 - tail.length - head.length - rest.length).fill(0), ...rest, ...tail];
}

/** True when the words are `::ffff:a.b.c.d` (IPv4-mapped). */
const isMapped = (w: readonly number[]): boolean => w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff;

/**
 * Parses a plain IPv4 or IPv6 address (a zone, brackets or spaces: undefined). An IPv4-mapped IPv6 address
 * (`::ffff:a.b.c.d`, also in hex) is the IPv4 address it carries: that is how a dual-stack socket reports an IPv4 peer,
 * and on the wire it is one. `keepMapped`: an IPv4-mapped address stays the IPv6 address it is written as (a policy
 * CIDR: see policy/authorization.ts).
 */
export function parseIp(text: string, opts: { keepMapped?: boolean } = {}): IpValue | undefined {
  if (isIPv4(text)) return { family: 4, value: text.split('.').reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n) };
  if (!isPlainIPv6(text)) return undefined;
  const w = v6Words(text);
  if (isMapped(w) && !opts.keepMapped) return { family: 4, value: (BigInt(w[6] ?? 0) << 16n) | BigInt(w[7] ?? 0) };
  return { family: 6, value: w.reduce((a, x) => (a << 16n) | BigInt(x), 0n) };
}

/** RFC 5952 text of eight words: lower case, no leading zeros, the longest run of two or more zero words as `::`. */
function formatWords(words: readonly number[]): string {
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (words[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && words[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = words.map((w) => w.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The text of an address value: dotted IPv4, or RFC 5952 IPv6. */
export function formatIp(ip: IpValue): string {
  if (ip.family === 4) return [24n, 16n, 8n, 0n].map((s) => String((ip.value >> s) & 0xffn)).join('.');
  return formatWords(Array.from({ length: 8 }, (_, i) => Number((ip.value >> BigInt(112 - 16 * i)) & 0xffffn)));
}

/** Canonical forms of recent IPv6 texts ('' for not an address): parsing one costs a few µs, a lookup here ~0.1. */
const v6Canonical = new Map<string, string>();
const V6_CACHE_MAX = 8192;

/**
 * The canonical text of a plain address (see parseIp and formatIp), or undefined when `text` is not one: a zone
 * (`fe80::1%eth0`), brackets, whitespace or a prefix length make it not one.
 */
export function canonicalIp(text: string): string | undefined {
  const s = text;
  if (isIPv4(s)) return s; // node's isIPv4 takes no leading zeros: a valid dotted quad is canonical
  if (s.length > 45) return canonicalV6(s); // longer than any IPv6 text: not an address, and not kept
  const known = v6Canonical.get(s);
  if (known !== undefined) return known || undefined;
  const out = canonicalV6(s);
  if (v6Canonical.size >= V6_CACHE_MAX) v6Canonical.clear(); // bounded: at worst some texts are parsed again
  v6Canonical.set(s, out ?? '');
  return out;
}

function canonicalV6(s: string): string | undefined {
  if (!isPlainIPv6(s)) return undefined;
  const w = v6Words(s);
  if (isMapped(w)) return `${(w[6] ?? 0) >> 8}.${(w[6] ?? 0) & 0xff}.${(w[7] ?? 0) >> 8}.${(w[7] ?? 0) & 0xff}`;
  return formatWords(w);
}

/** For lookups: the canonical text of an address, or the input unchanged when it is not an address (it then matches nothing). */
export function normalizeIp(text: string): string {
  return canonicalIp(text) ?? text;
}

/** The family of an address after canonicalisation (IPv4-mapped is IPv4), or undefined when it is not an address. */
export function ipFamily(text: string): IpFamily | undefined {
  const ip = parseIp(text);
  return ip === undefined ? undefined : ip.family === 4 ? 'ipv4' : 'ipv6';
}

/** The addresses of one family in a list, as written (IPv4-mapped counts as IPv4); texts that do not parse are left out. */
export function addressesOf(ips: readonly string[], family: IpFamily): string[] {
  return ips.filter((ip) => ipFamily(ip) === family);
}

/** The families present in a list of addresses, IPv4 first; addresses that do not parse are ignored. */
export function familiesOf(ips: readonly string[]): IpFamily[] {
  const seen = new Set(ips.map(ipFamily));
  return (['ipv4', 'ipv6'] as const).filter((f) => seen.has(f));
}

/** True when two texts name the same address (`fd00::1` and `fd00:0:0::1`, `10.0.0.1` and `::ffff:10.0.0.1`). */
export function sameIp(a: string, b: string): boolean {
  const x = canonicalIp(a);
  return x !== undefined && x === canonicalIp(b);
}

/** `host:port`, with an IPv6 host in brackets (`[fd00::1]:15008`); any other host as it is. */
export function formatHostPort(host: string, port: number | string): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * Parses `ip:port` as HBONE's `:authority` carries it: a dotted IPv4 address or a bracketed IPv6 address (no zone), then
 * a decimal port 1..65535. Anything else (a bare IPv6, a host name, stray brackets, a port of 0 or with a sign) is
 * undefined. The host comes back canonical, so it compares equal to the pod's own recorded addresses.
 */
export function parseIpPort(text: string | undefined): { host: string; port: number } | undefined {
  if (!text) return undefined;
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const raw = (m[1] ?? m[2]) as string;
  // Brackets hold IPv6 only (an IPv4-mapped one included); a dotted IPv4 never comes in brackets.
  if (m[1] !== undefined ? !isPlainIPv6(raw) : !isIPv4(raw)) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: canonicalIp(raw) as string, port };
}
