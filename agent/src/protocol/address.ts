// IP addresses as text, the one place for it: canonical forms (RFC 5952 for IPv6; an IPv4-mapped IPv6 address is its
// IPv4 address), address families, and `host:port` with IPv6 in brackets (formatting and strict parsing). Pure.
// Strict: a plain address only (no zone, brackets, spaces or prefix), whatever else node's isIP lets through. Parsing is
// a hand-written one-pass reader checked against node's isIP (test/unit/address.test.ts): it sits on every connection.
import { isIPv4 } from 'node:net';

export type IpFamily = 'ipv4' | 'ipv6';

/** An address as numbers: 32 bits for IPv4, 128 for IPv6. */
export interface IpValue {
  family: 4 | 6;
  value: bigint;
}

/** The value of a hex digit's char code, or -1. */
function hexDigit(c: number): number {
  if (c >= 48 && c <= 57) return c - 48; // 0-9
  const l = c | 0x20; // a-f and A-F alike
  return l >= 97 && l <= 102 ? l - 87 : -1;
}

/**
 * The 32 bits of a dotted quad that runs from `i` to the end of `s`, as node's isIPv4 takes it (four decimal octets of
 * at most 255, no leading zeros), or -1.
 */
function quadAt(s: string, i: number): number {
  let value = 0;
  for (let octet = 0; octet < 4; octet++) {
    if (octet > 0) {
      if (s.charCodeAt(i) !== 46) return -1; // '.'
      i++;
    }
    const start = i;
    let v = 0;
    while (i < s.length && i - start < 3) {
      const c = s.charCodeAt(i);
      if (c < 48 || c > 57) break;
      v = v * 10 + (c - 48);
      i++;
    }
    if (i === start || v > 255 || (i - start > 1 && s.charCodeAt(start) === 48)) return -1;
    value = value * 256 + v;
  }
  return i === s.length ? value : -1;
}

/** The 32 bits of a dotted quad as node's isIPv4 takes it (no leading zeros, no spaces), or -1. */
export function ipv4Bits(s: string): number {
  return quadAt(s, 0);
}

/**
 * The eight 16-bit words of the text of a plain IPv6 address (an IPv4-mapped one as written), or undefined when it is
 * not one: exactly what node's isIPv6 takes (groups of 1 to 4 hex digits, one `::` standing for at least one zero word,
 * a trailing dotted quad as the last two words) minus its `%zone` suffix, so no zone, bracket, space, sign or prefix
 * length gets through. One pass, no regular expression and no bigint: this runs on every new connection.
 */
export function ipv6Words(s: string): number[] | undefined {
  const n = s.length;
  if (n < 2 || n > 45) return undefined; // '::' is the shortest; 45 the longest (six groups and a dotted quad)
  const words: number[] = [];
  let gap = -1; // where `::` stands, as an index into words
  let i = 0;
  if (s.charCodeAt(0) === 58) {
    if (s.charCodeAt(1) !== 58) return undefined;
    gap = 0;
    i = 2;
  }
  while (i < n) {
    if (words.length === 8) return undefined;
    const start = i;
    let v = 0;
    while (i < n && i - start < 5) {
      const d = hexDigit(s.charCodeAt(i));
      if (d < 0) break;
      v = v * 16 + d;
      i++;
    }
    if (i === start) return undefined; // an empty group (`:::`, a stray `:`) or a foreign character
    if (i < n && s.charCodeAt(i) === 46) {
      // A dotted quad: read again from the group's start as decimal; it must end the text and leave room for two words.
      const q = quadAt(s, start);
      if (q < 0 || words.length > 6) return undefined;
      words.push(q >>> 16, q & 0xffff);
      break;
    }
    if (i - start > 4) return undefined;
    words.push(v);
    if (i === n) break;
    if (s.charCodeAt(i) !== 58) return undefined;
    i++;
    if (s.charCodeAt(i) === 58) {
      if (gap >= 0) return undefined; // a second `::`
      gap = words.length;
      i++;
    } else if (i === n) {
      return undefined; // a trailing single `:`
    }
  }
  if (gap < 0) return words.length === 8 ? words : undefined;
  if (words.length > 7) return undefined; // `::` stands for one zero word at least
  const zeros = new Array<number>(8 - words.length).fill(0);
  return [...words.slice(0, gap), ...zeros, ...words.slice(gap)];
}

/** True for the text of a plain IPv6 address (see ipv6Words). */
function isPlainIPv6(s: string): boolean {
  return ipv6Words(s) !== undefined;
}

/** True when the words are `::ffff:a.b.c.d` (IPv4-mapped). */
const isMapped = (w: readonly number[]): boolean => w[0] === 0 && w[1] === 0 && w[2] === 0 && w[3] === 0 && w[4] === 0 && w[5] === 0xffff;

/** A 32-bit unsigned number from two words. */
const pair = (hi: number, lo: number): number => hi * 0x10000 + lo;

/** Parsed texts (null: not an address), so a connection's addresses are read once, not on each of its checks. */
const parsed = new Map<string, IpValue | null>();
const PARSED_MAX = 8192;

/**
 * Parses a plain IPv4 or IPv6 address (a zone, brackets or spaces: undefined). An IPv4-mapped IPv6 address
 * (`::ffff:a.b.c.d`, also in hex) is the IPv4 address it carries: that is how a dual-stack socket reports an IPv4 peer,
 * and on the wire it is one. `keepMapped`: an IPv4-mapped address stays the IPv6 address it is written as (a policy
 * CIDR: see policy/authorization.ts). The value is frozen: it may be shared with other callers.
 */
export function parseIp(text: string, opts: { keepMapped?: boolean } = {}): IpValue | undefined {
  if (opts.keepMapped) return parseIpUncached(text, true);
  if (text.length > 45) return undefined;
  const known = parsed.get(text);
  if (known !== undefined) return known ?? undefined;
  const out = parseIpUncached(text, false);
  if (parsed.size >= PARSED_MAX) parsed.clear(); // bounded: at worst some texts are parsed again
  parsed.set(text, out ?? null);
  return out;
}

function parseIpUncached(text: string, keepMapped: boolean): IpValue | undefined {
  const quad = quadAt(text, 0); // node's isIPv4, in the same pass as the value
  if (quad >= 0) return Object.freeze({ family: 4, value: BigInt(quad) });
  const w = ipv6Words(text);
  if (w === undefined) return undefined;
  if (isMapped(w) && !keepMapped) return Object.freeze({ family: 4, value: BigInt(pair(w[6] as number, w[7] as number)) });
  const half = (k: number): bigint => (BigInt(pair(w[k] as number, w[k + 1] as number)) << 32n) | BigInt(pair(w[k + 2] as number, w[k + 3] as number));
  return Object.freeze({ family: 6, value: (half(0) << 64n) | half(4) });
}

/** RFC 5952 text of eight words: lower case, no leading zeros, the longest run of two or more zero words as `::`. */
export function formatWords(words: readonly number[]): string {
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
  const w = ipv6Words(s);
  return w === undefined ? undefined : canonicalWords(w);
}

/** The canonical text of eight words: RFC 5952, or the dotted IPv4 address an IPv4-mapped one carries. */
export function canonicalWords(w: readonly number[]): string {
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
