// The start-up probe of inbound source preservation (--preserve-source): a transparent socket bound to an address that
// is not the node's, and policy routing, for IPv4 and (with --capture-ipv6) IPv6. Fails the start naming what is
// missing, instead of degrading silently.
import { AmbientError } from '../errors.js';
import { runTool } from './exec.js';
import {
  AF_INET, AF_INET6, IPV6_TRANSPARENT, IP_BIND_ADDRESS_NO_PORT, IP_TRANSPARENT, SOCK_CLOEXEC, SOCK_STREAM, SOL_IP, SOL_IPV6, SyscallError, bind, close,
  setsockoptInt, sockaddrIn, sockaddrIn6, socket,
} from './libc.js';

export class SourcePreservationUnavailableError extends AmbientError<'AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE'> {
  /** `ipv6Only`: only the IPv6 half is missing, so turning IPv6 capture off is a way out too. */
  constructor(missing: string[], options?: { cause?: unknown; ipv6Only?: boolean }) {
    const v6 = options?.ipv6Only ? ', or with --capture-ipv6=false (enrolled pods\' IPv6 TCP is then refused in the pod)' : '';
    super('AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE',
      `--preserve-source cannot work here: ${missing.join('; ')}; fix that, or start the agent with --preserve-source=false (apps then see the agent, their own pod IP, as the peer of inbound connections)${v6}`,
      options);
  }
}

/** The families the probe covers. */
export type ProbeFamily = 4 | 6;

/**
 * Per family: an address that is never one of the node's, so binding it needs the transparent option (TEST-NET-1, RFC
 * 5737; the IPv6 documentation prefix, RFC 3849; nothing is sent), the option, and how the messages name the family.
 */
const PROBE: Record<ProbeFamily, { domain: number; level: number; option: number; name: string; addr: () => Buffer; ip: string }> = {
  4: { domain: AF_INET, level: SOL_IP, option: IP_TRANSPARENT, name: 'IP_TRANSPARENT', addr: () => sockaddrIn('192.0.2.1', 0), ip: '-4' },
  6: { domain: AF_INET6, level: SOL_IPV6, option: IPV6_TRANSPARENT, name: 'IPV6_TRANSPARENT', addr: () => sockaddrIn6('2001:db8::1', 0), ip: '-6' },
};

/** What the socket half of the probe found missing for a family ([] = fine). Binds only; the socket never connects. */
export function probeTransparentBind(family: ProbeFamily = 4): string[] {
  const p = PROBE[family];
  const v = family === 6 ? 'IPv6 ' : '';
  let fd: number;
  try {
    fd = socket(p.domain, SOCK_STREAM | SOCK_CLOEXEC);
  } catch (err) {
    return [`cannot create a ${v}TCP socket (${(err as Error).message})`];
  }
  try {
    try {
      setsockoptInt(fd, p.level, p.option, 1, p.name);
    } catch (err) {
      const eperm = err instanceof SyscallError && err.errnoName === 'EPERM';
      return [eperm ? `setting ${p.name} was refused (EPERM): the agent needs CAP_NET_ADMIN (or CAP_NET_RAW)` : `${p.name} is not supported (${(err as Error).message})`];
    }
    try {
      setsockoptInt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1, 'IP_BIND_ADDRESS_NO_PORT');
    } catch (err) {
      return [`IP_BIND_ADDRESS_NO_PORT is not supported${v ? ' on IPv6 sockets' : ''}: the kernel is older than Linux 4.2 (${(err as Error).message})`];
    }
    try {
      bind(fd, p.addr());
    } catch (err) {
      return [`a transparent ${v}socket cannot bind a non-local address (${(err as Error).message})`];
    }
    return [];
  } finally {
    close(fd);
  }
}

/** What the routing half of the probe found missing for a family: policy routing (`ip rule`, CONFIG_IP_MULTIPLE_TABLES, CONFIG_IPV6_MULTIPLE_TABLES). Reads only. */
export async function probePolicyRouting(family: ProbeFamily = 4): Promise<string[]> {
  const flag = PROBE[family].ip;
  try {
    await runTool('ip', [flag, 'rule', 'show']);
    return [];
  } catch (err) {
    const config = family === 6 ? 'CONFIG_IPV6_MULTIPLE_TABLES' : 'CONFIG_IP_MULTIPLE_TABLES';
    return [`${family === 6 ? 'IPv6 ' : ''}policy routing is unavailable (\`ip ${flag} rule show\` failed: ${(err as Error).message.split('\n')[0]}): the kernel needs ${config}, and the iproute2 \`ip\` tool must be installed`];
  }
}

/**
 * The whole probe, for IPv4 and, with `ipv6` (--capture-ipv6: the agent then preserves IPv6 clients too), IPv6: throws
 * SourcePreservationUnavailableError naming everything missing.
 */
export async function probeSourcePreservation(opts: { ipv6?: boolean } = {}): Promise<void> {
  const families: ProbeFamily[] = opts.ipv6 ? [4, 6] : [4];
  const missing = new Map<ProbeFamily, string[]>();
  for (const family of families) missing.set(family, [...probeTransparentBind(family), ...(await probePolicyRouting(family))]);
  const all = [...missing.values()].flat();
  if (all.length > 0) throw new SourcePreservationUnavailableError(all, { ipv6Only: missing.get(4)?.length === 0 });
}
