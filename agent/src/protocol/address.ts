// IP addresses as text, the one place for it: canonical forms (RFC 5952 for IPv6; an IPv4-mapped IPv6 address is its
// IPv4 address), address families, and `host:port` with IPv6 in brackets (formatting and strict parsing). Pure.
import { isIP } from 'node:net';

export type IpFamily = 'ipv4' | 'ipv6';

/** An address as numbers: 32 bits for IPv4, 128 for IPv6. */
export interface IpValue {
  family: 4 | 6;
  value: bigint;
}

/**
 * Parses an IPv4 or IPv6 address (a `%zone` suffix is dropped). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, also in
 * hex) is the IPv4 address it carries: that is how a dual-stack socket reports an IPv4 peer, and on the wire it is one.
 */
export function parseIp(text: string): IpValue | undefined {
  const s = text.replace(/%.*$/, '');
  const fam = isIP(s);
  if (fam === 4) return { family: 4, value: s.split('.').reduce((a, o) => (a << 8n) | BigInt(Number(o)), 0n) };
  if (fam !== 6) return undefined;
  let tail = s;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(s);
  if (v4?.[1]) {
    const n = Number(parseIp(v4[1])?.value ?? 0n);
    tail = s.slice(0, -v4[1].length) + `${(n >>> 16).toString(16)}:${(n & 0xffff).toString(16)}`;
  }
  const [head = '', rest] = tail.split('::');
  const hs = head ? head.split(':') : [];
  const ts = rest ? rest.split(':') : [];
  const fill = rest === undefined ? 0 : 8 - hs.length - ts.length;
  const words = [...hs, ...Array<string>(fill).fill('0'), ...ts].map((w) => parseInt(w, 16));
  const value = words.reduce((a, w) => (a << 16n) | BigInt(w), 0n);
  if (value >> 32n === 0xffffn) return { family: 4, value: value & 0xffffffffn };
  return { family: 6, value };
}

/** The text of an address value: dotted IPv4, or RFC 5952 IPv6 (lower case, longest run of two or more zero words as `::`). */
export function formatIp(ip: IpValue): string {
  if (ip.family === 4) return [24n, 16n, 8n, 0n].map((s) => String((ip.value >> s) & 0xffn)).join('.');
  const words = Array.from({ length: 8 }, (_, i) => Number((ip.value >> BigInt(112 - 16 * i)) & 0xffffn));
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

/** The canonical text of an address (see parseIp and formatIp), or undefined when `text` is not one. */
export function canonicalIp(text: string): string | undefined {
  const ip = parseIp(text);
  return ip ? formatIp(ip) : undefined;
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
  if (isIP(raw) !== (m[1] !== undefined ? 6 : 4)) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  return { host: canonicalIp(raw) as string, port };
}
