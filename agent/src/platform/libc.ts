// koffi bindings to the few libc calls the agent needs (setns, sockets, sockopts, sendmsg/recvmsg for fd passing, posix_spawn,
// madvise and malloc_trim to give memory back).
// The only file that loads libc; everything else goes through netns.ts or sockets.ts.
import koffi from 'koffi';
import { AmbientError } from '../errors.js';
import { canonicalIp, canonicalWords, ipv4Bits, ipv6Words } from '../protocol/address.js';

const libc = koffi.load('libc.so.6');

export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const SOL_SOCKET = 1;
export const SO_REUSEADDR = 2;
export const SO_REUSEPORT = 15;
export const SO_MARK = 36;
export const SOL_IP = 0;
export const IP_TRANSPARENT = 19;
/** Bind an address now and the port at connect(), from the whole 4-tuple space (Linux 4.2+). */
export const IP_BIND_ADDRESS_NO_PORT = 24;
export const SO_ORIGINAL_DST = 80;
export const SOL_IPV6 = 41;
/** An AF_INET6 socket takes IPv6 only (no IPv4-mapped peers), so `::` can sit beside an IPv4 listener on the same port. */
export const IPV6_V6ONLY = 26;
/** IPv6's IP_TRANSPARENT (the same socket flag): bind a non-local address, accept steered packets. */
export const IPV6_TRANSPARENT = 75;
/** getsockopt(SOL_IPV6): the destination before REDIRECT, a struct sockaddr_in6 (IPv6's SO_ORIGINAL_DST). */
export const IP6T_SO_ORIGINAL_DST = 80;
export const CLONE_NEWNET = 0x40000000;
export const LOCK_EX = 2;
export const LOCK_NB = 4;
export const EWOULDBLOCK = 11;
const EINPROGRESS = 115;
export const AF_UNIX = 1;
export const SOCK_SEQPACKET = 5;
export const SO_TYPE = 3;
export const SO_PEERCRED = 17;
export const SO_DOMAIN = 39;
/** 1 when the socket is listening (read-only). */
export const SO_ACCEPTCONN = 30;
/** ioctl on a socket: a new fd (close-on-exec) for the network namespace the socket belongs to (Linux 4.9+). */
export const SIOCGSKNS = 0x894c;
export const MSG_CTRUNC = 0x8;
export const MSG_TRUNC = 0x20;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const MSG_CMSG_CLOEXEC = 0x40000000;
export const SCM_RIGHTS = 1;

/** struct iovec and struct msghdr (x86_64 / aarch64 layout), for sendmsg/recvmsg with ancillary data (fd passing). */
const iovec = koffi.struct('ambient_iovec', { iov_base: 'void *', iov_len: 'size_t' });
const msghdr = koffi.struct('ambient_msghdr', {
  msg_name: 'void *', msg_namelen: 'uint32_t', msg_iov: koffi.pointer(iovec), msg_iovlen: 'size_t',
  msg_control: 'void *', msg_controllen: 'size_t', msg_flags: 'int',
});

const fns = {
  setns: libc.func('int setns(int fd, int nstype)'),
  socket: libc.func('int socket(int domain, int type, int protocol)'),
  setsockopt: libc.func('int setsockopt(int fd, int level, int optname, const void *optval, uint32_t optlen)'),
  getsockopt: libc.func('int getsockopt(int fd, int level, int optname, _Out_ void *optval, _Inout_ uint32_t *optlen)'),
  bind: libc.func('int bind(int fd, const void *addr, uint32_t addrlen)'),
  getsockname: libc.func('int getsockname(int fd, _Out_ void *addr, _Inout_ uint32_t *addrlen)'),
  listen: libc.func('int listen(int fd, int backlog)'),
  connect: libc.func('int connect(int fd, const void *addr, uint32_t addrlen)'),
  accept4: libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)'),
  sendmsg: libc.func('sendmsg', 'intptr_t', ['int', koffi.pointer(msghdr), 'int']),
  recvmsg: libc.func('recvmsg', 'intptr_t', ['int', koffi.inout(koffi.pointer(msghdr)), 'int']),
  poll: libc.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)'),
  close: libc.func('int close(int fd)'),
  /** Declared without the variadic argument: used only for requests that take none (SIOCGSKNS). */
  ioctl: libc.func('int ioctl(int fd, unsigned long request)'),
  fcntl: libc.func('int fcntl(int fd, int cmd, int arg)'),
  flock: libc.func('int flock(int fd, int operation)'),
  strerror: libc.func('const char *strerror(int errnum)'),
  ifNameToIndex: libc.func('uint32_t if_nametoindex(const char *name)'),
  vsnprintf: libc.func('int vsnprintf(_Out_ uint8_t *buf, size_t size, const char *fmt, void *args)'),
  madvise: libc.func('int madvise(uintptr_t addr, size_t length, int advice)'),
  mallocTrim: libc.func('int malloc_trim(size_t pad)'),
};

export function strerror(errno: number): string {
  return fns.strerror(errno) as string;
}

/** The index of the interface `name` in the calling thread's network namespace; 0 when there is none. */
export function ifNameToIndex(name: string): number {
  return fns.ifNameToIndex(name) as number;
}

/** Formats a C printf-style message with its va_list (for C libraries' log callbacks). */
export function vformat(fmt: string, args: unknown, max = 8192): string {
  const buf = Buffer.alloc(max);
  const n = fns.vsnprintf(buf, buf.length, fmt, args) as number;
  return buf.subarray(0, Math.max(0, Math.min(n, buf.length - 1))).toString('utf8');
}

const MADV_DONTNEED = 4;

/** Unmaps the resident pages of [start, start + length) from this process; only for mappings smaps.ts calls clean. */
export function madviseDontNeed(start: number, length: number): void {
  check('madvise', fns.madvise(start, length, MADV_DONTNEED) as number);
}

/** glibc's malloc_trim(0): gives free malloc memory back to the kernel, in every arena. True when some was released. */
export function mallocTrim(): boolean {
  return (fns.mallocTrim(0) as number) === 1;
}

/** A failed libc call, with the errno name a person can search for (`errnoName`, e.g. EPERM). */
export class SyscallError extends AmbientError<'AMB_ERR_SYSCALL'> {
  readonly errnoName: string;
  constructor(readonly syscall: string, readonly errno: number, detail?: string) {
    super('AMB_ERR_SYSCALL', `${syscall}${detail ? ` ${detail}` : ''}: ${fns.strerror(errno) as string} (errno ${errno})`);
    this.errnoName = ERRNO_NAMES[errno] ?? `ERRNO_${errno}`;
  }
}

const ERRNO_NAMES: Record<number, string> = {
  1: 'EPERM', 2: 'ENOENT', 9: 'EBADF', 11: 'EWOULDBLOCK', 13: 'EACCES', 22: 'EINVAL', 24: 'EMFILE',
  32: 'EPIPE', 92: 'ENOPROTOOPT', 98: 'EADDRINUSE', 99: 'EADDRNOTAVAIL', 104: 'ECONNRESET', 111: 'ECONNREFUSED',
};

function check(syscall: string, rc: number, detail?: string): number {
  if (rc < 0) throw new SyscallError(syscall, koffi.errno(), detail);
  return rc;
}

export function setns(fd: number, nstype: number): void {
  check('setns', fns.setns(fd, nstype) as number);
}

export function socket(domain: number, type: number, protocol = 0): number {
  return check('socket', fns.socket(domain, type, protocol) as number);
}

/** setsockoptInt's optval: the kernel copies it during the (synchronous) call, so one buffer serves every call. */
const INT_OPTVAL = Buffer.alloc(4);

export function setsockoptInt(fd: number, level: number, name: number, value: number, what: string): void {
  INT_OPTVAL.writeInt32LE(value);
  check('setsockopt', fns.setsockopt(fd, level, name, INT_OPTVAL, 4) as number, what);
}

export function getsockoptBuf(fd: number, level: number, name: number, size: number, what: string): Buffer {
  const buf = Buffer.alloc(size);
  const len = [size];
  check('getsockopt', fns.getsockopt(fd, level, name, buf, len) as number, what);
  return buf.subarray(0, len[0]);
}

export function bind(fd: number, addr: Buffer): void {
  check('bind', fns.bind(fd, addr, addr.length) as number);
}

/** The socket's local address (struct sockaddr_in for IPv4 sockets, sockaddr_in6 for IPv6). */
export function getsockname(fd: number): Buffer {
  const buf = Buffer.alloc(128);
  const len = [buf.length];
  check('getsockname', fns.getsockname(fd, buf, len) as number);
  return buf.subarray(0, len[0]);
}

/** localPort's scratch space (read within the synchronous call only). */
const LOCAL_NAME = Buffer.alloc(128);
const LOCAL_NAME_LEN = [0];

/** The port an inet socket is bound to (sin_port and sin6_port sit at the same offset); 0 when none yet. */
export function localPort(fd: number): number {
  LOCAL_NAME_LEN[0] = LOCAL_NAME.length;
  check('getsockname', fns.getsockname(fd, LOCAL_NAME, LOCAL_NAME_LEN) as number);
  return LOCAL_NAME.readUInt16BE(2);
}

export function listen(fd: number, backlog: number): void {
  check('listen', fns.listen(fd, backlog) as number);
}

/** connect(2); false when a non-blocking socket would block (EAGAIN: a Unix listener's backlog is full). */
export function connect(fd: number, addr: Buffer): boolean {
  if ((fns.connect(fd, addr, addr.length) as number) === 0) return true;
  const errno = koffi.errno();
  if (errno === EWOULDBLOCK) return false;
  throw new SyscallError('connect', errno);
}

/** Starts a non-blocking TCP socket's connect(2): returns whether it is done already; in flight (EINPROGRESS) is false. */
export function connectStart(fd: number, addr: Buffer): boolean {
  if ((fns.connect(fd, addr, addr.length) as number) === 0) return true;
  const errno = koffi.errno();
  if (errno === EINPROGRESS) return false;
  throw new SyscallError('connect', errno);
}

/** accept4(2) without the peer's address; undefined when a non-blocking listener has nothing queued. */
export function accept(fd: number, flags: number): number | undefined {
  const rc = fns.accept4(fd, null, null, flags) as number;
  if (rc >= 0) return rc;
  const errno = koffi.errno();
  if (errno === EWOULDBLOCK) return undefined;
  throw new SyscallError('accept4', errno);
}

/** sendmsg(2) of one buffer with a control buffer; undefined when it would block (EAGAIN). */
export function sendmsg(fd: number, data: Buffer, control: Buffer | null, flags: number): number | undefined {
  const msg = {
    msg_name: null, msg_namelen: 0, msg_iov: [{ iov_base: data, iov_len: data.length }], msg_iovlen: 1,
    msg_control: control, msg_controllen: control?.length ?? 0, msg_flags: 0,
  };
  const rc = Number(fns.sendmsg(fd, msg, flags));
  if (rc >= 0) return rc;
  const errno = koffi.errno();
  if (errno === EWOULDBLOCK) return undefined;
  throw new SyscallError('sendmsg', errno);
}

/**
 * recvmsg(2) into `data` and `control`; undefined when it would block (EAGAIN). Returns the byte count (0: the peer
 * closed), the control bytes the kernel filled in and msg_flags (MSG_TRUNC, MSG_CTRUNC).
 */
export function recvmsg(fd: number, data: Buffer, control: Buffer, flags: number): { bytes: number; controlLength: number; flags: number } | undefined {
  const msg = {
    msg_name: null, msg_namelen: 0, msg_iov: [{ iov_base: data, iov_len: data.length }], msg_iovlen: 1,
    msg_control: control, msg_controllen: control.length, msg_flags: 0,
  };
  const rc = Number(fns.recvmsg(fd, msg, flags));
  if (rc < 0) {
    const errno = koffi.errno();
    if (errno === EWOULDBLOCK) return undefined;
    throw new SyscallError('recvmsg', errno);
  }
  return { bytes: rc, controlLength: Number(msg.msg_controllen), flags: msg.msg_flags };
}

export const POLLIN = 0x1;
export const POLLOUT = 0x4;

/**
 * Waits on a libuv worker thread (koffi async) until `fd` has one of `events` or `timeoutMs` passes: the event loop
 * stays free and wakes as soon as the kernel says so. Resolves the revents (0 on timeout or error).
 */
export function pollAsync(fd: number, events: number, timeoutMs: number): Promise<number> {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  return new Promise((resolve) => {
    (fns.poll as unknown as { async: (...a: unknown[]) => void }).async(pfd, 1, Math.max(0, Math.floor(timeoutMs)), (err: unknown, rc: number) => {
      resolve(err || rc <= 0 ? 0 : pfd.readInt16LE(6));
    });
  });
}

/** A second descriptor for the same socket, close-on-exec (F_DUPFD_CLOEXEC). */
export function dupCloexec(fd: number): number {
  return check('fcntl', fns.fcntl(fd, 1030, 0) as number, 'F_DUPFD_CLOEXEC');
}

/** flock(2) on an fd: false when `LOCK_NB` was asked and another open file holds a conflicting lock. */
export function flock(fd: number, operation: number): boolean {
  if ((fns.flock(fd, operation) as number) === 0) return true;
  const errno = koffi.errno();
  if (errno === EWOULDBLOCK) return false;
  throw new SyscallError('flock', errno);
}

/** ioctl(2) for a request that takes no argument; returns its result (e.g. a new fd). */
export function ioctlNoArg(fd: number, request: number, what: string): number {
  return check('ioctl', fns.ioctl(fd, request) as number, what);
}

export function close(fd: number): void {
  fns.close(fd);
}

/** struct sockaddr_un for a filesystem path (at most 107 bytes). */
export function sockaddrUn(path: string): Buffer {
  const p = Buffer.from(path, 'utf8');
  if (p.length > 107 || p.includes(0)) throw new Error(`Unix socket path too long or malformed: ${path}`);
  const buf = Buffer.alloc(2 + 108);
  buf.writeUInt16LE(AF_UNIX, 0);
  p.copy(buf, 2);
  return buf;
}

/** struct sockaddr_in for an IPv4 address and port. */
export function sockaddrIn(address: string, port: number): Buffer {
  const bits = ipv4Bits(address);
  if (bits < 0) throw new Error(`not an IPv4 address: ${address}`);
  const buf = Buffer.alloc(16);
  buf.writeUInt16LE(AF_INET, 0);
  buf.writeUInt16BE(port, 2);
  buf.writeUInt32BE(bits, 4);
  return buf;
}

export function parseSockaddrIn(buf: Buffer): { address: string; port: number } {
  if (buf.length < 8 || buf.readUInt16LE(0) !== AF_INET) throw new Error('not a sockaddr_in');
  return { address: [...buf.subarray(4, 8)].join('.'), port: buf.readUInt16BE(2) };
}

/** sizeof(struct sockaddr_in6): family, port (big-endian), flowinfo, 16-byte address, scope id. */
export const SOCKADDR_IN6_SIZE = 28;

/**
 * struct sockaddr_in6 for a plain IPv6 address (written as it is: an IPv4-mapped one stays mapped; no zone, use
 * `scopeId` for a link-local address) and port.
 */
export function sockaddrIn6(address: string, port: number, scopeId = 0): Buffer {
  const words = ipv6Words(address);
  if (words === undefined) throw new Error(`not an IPv6 address: ${address}`);
  const buf = Buffer.alloc(SOCKADDR_IN6_SIZE);
  buf.writeUInt16LE(AF_INET6, 0);
  buf.writeUInt16BE(port, 2);
  for (let i = 0; i < 8; i++) buf.writeUInt16BE(words[i] as number, 8 + 2 * i);
  buf.writeUInt32LE(scopeId, 24);
  return buf;
}

/** A struct sockaddr_in6's address (canonical: an IPv4-mapped one is its IPv4 address, see protocol/address.ts) and port. */
export function parseSockaddrIn6(buf: Buffer): { address: string; port: number; scopeId: number } {
  if (buf.length < SOCKADDR_IN6_SIZE || buf.readUInt16LE(0) !== AF_INET6) throw new Error('not a sockaddr_in6');
  const words: number[] = [];
  for (let i = 0; i < 8; i++) words.push(buf.readUInt16BE(8 + 2 * i));
  return { address: canonicalWords(words), port: buf.readUInt16BE(2), scopeId: buf.readUInt32LE(24) };
}

/**
 * The socket family for an address: AF_INET6 for IPv6 text (anything with a colon), except an IPv4-mapped address, which
 * is the IPv4 address it carries (AF_INET, as protocol/address.ts canonicalises it); AF_INET for anything else.
 * `address` comes back as the text to use with that family. Throws for colon text that is no plain IPv6 address.
 */
export function inetAddress(address: string): { family: typeof AF_INET | typeof AF_INET6; address: string } {
  if (!address.includes(':')) return { family: AF_INET, address };
  const canonical = canonicalIp(address);
  if (canonical === undefined) throw new Error(`not an IP address: ${address}`);
  return { family: canonical.includes(':') ? AF_INET6 : AF_INET, address: canonical };
}

/** struct sockaddr_in or sockaddr_in6, by the address's family (see inetAddress). */
export function sockaddrInet(address: string, port: number): Buffer {
  const a = inetAddress(address);
  return a.family === AF_INET6 ? sockaddrIn6(a.address, port) : sockaddrIn(a.address, port);
}

/** The address and port of a struct sockaddr_in or sockaddr_in6 (getsockname, getpeername). */
export function parseSockaddrInet(buf: Buffer): { address: string; port: number } {
  if (buf.length >= 2 && buf.readUInt16LE(0) === AF_INET6) {
    const { address, port } = parseSockaddrIn6(buf);
    return { address, port };
  }
  return parseSockaddrIn(buf);
}

/** posix_spawn and what goes with it, for spawn.ts (which owns how they are used): glibc's structures as opaque buffers. */
export const spawnCalls = {
  pipe2: libc.func('int pipe2(_Out_ int *fds, int flags)'),
  posixSpawn: libc.func('int posix_spawn(_Out_ int *pid, const char *path, void *fa, void *attr, const char **argv, const char **envp)'),
  faInit: libc.func('int posix_spawn_file_actions_init(void *fa)'),
  faDestroy: libc.func('int posix_spawn_file_actions_destroy(void *fa)'),
  faDup2: libc.func('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)'),
  faClose: libc.func('int posix_spawn_file_actions_addclose(void *fa, int fd)'),
  faCloseFrom: libc.func('int posix_spawn_file_actions_addclosefrom_np(void *fa, int from)'),
  attrInit: libc.func('int posix_spawnattr_init(void *attr)'),
  attrDestroy: libc.func('int posix_spawnattr_destroy(void *attr)'),
  attrSetFlags: libc.func('int posix_spawnattr_setflags(void *attr, short flags)'),
  attrSetSigDefault: libc.func('int posix_spawnattr_setsigdefault(void *attr, const void *set)'),
  attrSetSigMask: libc.func('int posix_spawnattr_setsigmask(void *attr, const void *set)'),
  sigemptyset: libc.func('int sigemptyset(void *set)'),
  sigfillset: libc.func('int sigfillset(void *set)'),
  waitpid: libc.func('int waitpid(int pid, _Out_ int *status, int options)'),
};
