// The start-up probe of inbound source preservation (--preserve-source): a transparent socket bound to an address that
// is not the node's, and policy routing. Fails the start naming what is missing, instead of degrading silently.
import { AmbientError } from '../errors.js';
import { runTool } from './exec.js';
import {
  AF_INET, IP_BIND_ADDRESS_NO_PORT, IP_TRANSPARENT, SOCK_CLOEXEC, SOCK_STREAM, SOL_IP, SyscallError, bind, close, setsockoptInt, sockaddrIn, socket,
} from './libc.js';

export class SourcePreservationUnavailableError extends AmbientError<'AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE'> {
  constructor(missing: string[], options?: { cause?: unknown }) {
    super('AMB_ERR_PRESERVE_SOURCE_UNAVAILABLE',
      `--preserve-source cannot work here: ${missing.join('; ')}; fix that, or start the agent with --preserve-source=false (apps then see the agent, their own pod IP, as the peer of inbound connections)`,
      options);
  }
}

/** An address from TEST-NET-1 (RFC 5737): never one of the node's, so binding it needs IP_TRANSPARENT. Nothing is sent. */
const PROBE_ADDRESS = '192.0.2.1';

/** What the socket half of the probe found missing ([] = fine). Binds only; the socket never connects. */
export function probeTransparentBind(): string[] {
  let fd: number;
  try {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC);
  } catch (err) {
    return [`cannot create a TCP socket (${(err as Error).message})`];
  }
  try {
    try {
      setsockoptInt(fd, SOL_IP, IP_TRANSPARENT, 1, 'IP_TRANSPARENT');
    } catch (err) {
      const eperm = err instanceof SyscallError && err.errnoName === 'EPERM';
      return [eperm ? 'setting IP_TRANSPARENT was refused (EPERM): the agent needs CAP_NET_ADMIN (or CAP_NET_RAW)' : `IP_TRANSPARENT is not supported (${(err as Error).message})`];
    }
    try {
      setsockoptInt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1, 'IP_BIND_ADDRESS_NO_PORT');
    } catch (err) {
      return [`IP_BIND_ADDRESS_NO_PORT is not supported: the kernel is older than Linux 4.2 (${(err as Error).message})`];
    }
    try {
      bind(fd, sockaddrIn(PROBE_ADDRESS, 0));
    } catch (err) {
      return [`a transparent socket cannot bind a non-local address (${(err as Error).message})`];
    }
    return [];
  } finally {
    close(fd);
  }
}

/** What the routing half of the probe found missing: policy routing (`ip rule`, CONFIG_IP_MULTIPLE_TABLES). Reads only. */
export async function probePolicyRouting(): Promise<string[]> {
  try {
    await runTool('ip', ['-4', 'rule', 'show']);
    return [];
  } catch (err) {
    return [`policy routing is unavailable (\`ip -4 rule show\` failed: ${(err as Error).message.split('\n')[0]}): the kernel needs CONFIG_IP_MULTIPLE_TABLES, and the iproute2 \`ip\` tool must be installed`];
  }
}

/** The whole probe: throws SourcePreservationUnavailableError naming everything missing. */
export async function probeSourcePreservation(): Promise<void> {
  const missing = [...probeTransparentBind(), ...(await probePolicyRouting())];
  if (missing.length > 0) throw new SourcePreservationUnavailableError(missing);
}
