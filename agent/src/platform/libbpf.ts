// koffi bindings to libbpf.so.1: open/load BPF objects, attach tc clsact programs, read program and map info.
// The only file that loads libbpf. Every call is synchronous, so tc attach/query/detach run inside withNetns (netlink sockets are per netns).
import koffi from 'koffi';
import { close, strerror, vformat } from './libc.js';
import { AmbientError } from '../errors.js';

export const BPF_TC_INGRESS = 1;
export const BPF_TC_EGRESS = 2;
export const BPF_TC_F_REPLACE = 1;
export const BPF_PROG_TYPE_SCHED_CLS = 3;
export const BPF_ANY = 0;
/** Kernel helper ids (linux/bpf.h) the programs call, for the feature probe. */
export const BPF_FUNC = {
  skb_store_bytes: 9, redirect: 23, csum_diff: 28, skb_change_type: 32, skb_change_tail: 38, sk_release: 86, sk_fullsock: 95,
  skc_lookup_tcp: 99, sk_storage_get: 107, sk_assign: 124,
} as const;

/** The libbpf failure, with everything libbpf and the verifier printed while it happened (verbatim). */
export class LibbpfError extends AmbientError<'AMB_ERR_BPF'> {
  constructor(readonly call: string, readonly errno: number, readonly log: string) {
    super('AMB_ERR_BPF', `${call}: ${strerror(errno)} (errno ${errno})${log ? `\n${log}` : ''}`);
  }
}

export class LibbpfMissingError extends AmbientError<'AMB_ERR_BPF_UNAVAILABLE'> {
  constructor(cause: unknown) {
    super('AMB_ERR_BPF_UNAVAILABLE', 'libbpf.so.1 cannot be loaded: install libbpf1 (scripts/setup.sh installs it)', { cause });
  }
}

interface Lib {
  openFile: koffi.KoffiFunction;
  load: koffi.KoffiFunction;
  close: koffi.KoffiFunction;
  findProg: koffi.KoffiFunction;
  progFd: koffi.KoffiFunction;
  setLogBuf: koffi.KoffiFunction;
  findMapFd: koffi.KoffiFunction;
  mapUpdate: koffi.KoffiFunction;
  mapLookup: koffi.KoffiFunction;
  hookCreate: koffi.KoffiFunction;
  hookDestroy: koffi.KoffiFunction;
  attach: koffi.KoffiFunction;
  detach: koffi.KoffiFunction;
  query: koffi.KoffiFunction;
  progFdById: koffi.KoffiFunction;
  mapFdById: koffi.KoffiFunction;
  infoByFd: koffi.KoffiFunction;
  probeHelper: koffi.KoffiFunction;
  probeProgType: koffi.KoffiFunction;
  numCpus: koffi.KoffiFunction;
}

let lib: Lib | undefined;
/** Lines libbpf printed since the last take(); the print callback appends to it. */
let printed: string[] = [];

function libbpf(): Lib {
  if (lib) return lib;
  let so: koffi.IKoffiLib;
  try {
    so = koffi.load('libbpf.so.1');
  } catch (err) {
    throw new LibbpfMissingError(err);
  }
  const printFn = koffi.proto('int ambient_libbpf_print(int level, const char *fmt, void *args)');
  const cb = koffi.register((level: number, fmt: string, args: unknown): number => {
    if (level <= 1) printed.push(vformat(fmt, args).trimEnd());
    return 0;
  }, koffi.pointer(printFn));
  so.func('void *libbpf_set_print(ambient_libbpf_print *fn)')(cb);
  lib = {
    openFile: so.func('void *bpf_object__open_file(const char *path, const void *opts)'),
    load: so.func('int bpf_object__load(void *obj)'),
    close: so.func('void bpf_object__close(void *obj)'),
    findProg: so.func('void *bpf_object__find_program_by_name(const void *obj, const char *name)'),
    progFd: so.func('int bpf_program__fd(const void *prog)'),
    setLogBuf: so.func('int bpf_program__set_log_buf(void *prog, void *buf, size_t size)'),
    findMapFd: so.func('int bpf_object__find_map_fd_by_name(const void *obj, const char *name)'),
    mapUpdate: so.func('int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)'),
    mapLookup: so.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ uint8_t *value)'),
    hookCreate: so.func('int bpf_tc_hook_create(void *hook)'),
    hookDestroy: so.func('int bpf_tc_hook_destroy(void *hook)'),
    attach: so.func('int bpf_tc_attach(const void *hook, _Inout_ uint8_t *opts)'),
    detach: so.func('int bpf_tc_detach(const void *hook, const void *opts)'),
    query: so.func('int bpf_tc_query(const void *hook, _Inout_ uint8_t *opts)'),
    progFdById: so.func('int bpf_prog_get_fd_by_id(uint32_t id)'),
    mapFdById: so.func('int bpf_map_get_fd_by_id(uint32_t id)'),
    infoByFd: so.func('int bpf_obj_get_info_by_fd(int fd, _Inout_ uint8_t *info, _Inout_ uint32_t *len)'),
    probeHelper: so.func('int libbpf_probe_bpf_helper(int progType, int helper, const void *opts)'),
    probeProgType: so.func('int libbpf_probe_bpf_prog_type(int progType, const void *opts)'),
    numCpus: so.func('int libbpf_num_possible_cpus(void)'),
  };
  return lib;
}


function take(): string {
  const out = printed.join('\n');
  printed = [];
  return out;
}

/** libbpf 1.x returns -errno; turns a negative return into a LibbpfError carrying what libbpf printed. */
function check(call: string, rc: number, extraLog = ''): number {
  if (rc < 0) throw new LibbpfError(call, -rc, [take(), extraLog].filter(Boolean).join('\n'));
  return rc;
}

/** Whether libbpf can be loaded at all (the feature probe's first step). */
export function ensureLibbpf(): void {
  libbpf();
}

/** True when the kernel supports the program type / the helper for SCHED_CLS programs. */
export function probeProgType(progType: number): boolean {
  return (libbpf().probeProgType(progType, null) as number) === 1;
}

export function probeHelper(progType: number, helper: number): boolean {
  return (libbpf().probeHelper(progType, helper, null) as number) === 1;
}


export interface ProgInfo {
  id: number;
  tag: string;
  name: string;
  mapIds: number[];
}

export interface MapInfo {
  id: number;
  name: string;
  valueSize: number;
}

/** A loaded BPF object; close() releases our fds (attached programs stay alive through their tc filter). */
export class BpfObject {
  private constructor(private obj: unknown) {}

  /** Opens and loads path; verifier output appears verbatim in the thrown LibbpfError. */
  static load(path: string, programs: readonly string[]): BpfObject {
    const l = libbpf();
    take();
    const obj = l.openFile(path, null);
    if (!obj) throw new LibbpfError(`bpf_object__open_file ${path}`, koffi.errno() || 22, take());
    const logs = programs.map((name) => {
      const prog = l.findProg(obj, name);
      if (!prog) {
        l.close(obj);
        throw new LibbpfError(`program ${name} not found in ${path}`, 2, take());
      }
      // Our own buffer per program: on a failed load libbpf retries with logging into it, giving the full verifier log.
      const buf = koffi.alloc('char', 1 << 20);
      koffi.encode(buf, 'char', 0);
      l.setLogBuf(prog, buf, 1 << 20);
      return { name, buf };
    });
    const rc = l.load(obj) as number;
    if (rc < 0) {
      const verifier = logs.map((x) => {
        const text = (koffi.decode(x.buf, 'char', -1) as string).trim();
        return text ? `verifier log for ${x.name}:\n${text}` : '';
      }).filter(Boolean).join('\n');
      l.close(obj);
      for (const x of logs) koffi.free(x.buf);
      check('bpf_object__load', rc, verifier);
    }
    for (const x of logs) l.setLogBuf(l.findProg(obj, x.name), null, 0);
    for (const x of logs) koffi.free(x.buf);
    return new BpfObject(obj);
  }

  progFd(name: string): number {
    const l = libbpf();
    const prog = l.findProg(this.obj, name);
    if (!prog) throw new LibbpfError(`program ${name} not found`, 2, '');
    return check(`bpf_program__fd ${name}`, l.progFd(prog) as number);
  }

  mapFd(name: string): number {
    return check(`bpf_object__find_map_fd_by_name ${name}`, libbpf().findMapFd(this.obj, name) as number);
  }

  close(): void {
    if (this.obj) libbpf().close(this.obj);
    this.obj = undefined;
  }
}

export function mapUpdate(fd: number, key: Buffer, value: Buffer): void {
  check('bpf_map_update_elem', libbpf().mapUpdate(fd, key, value, BPF_ANY) as number);
}

export function mapLookup(fd: number, key: Buffer, valueSize: number): Buffer {
  const out = Buffer.alloc(valueSize);
  check('bpf_map_lookup_elem', libbpf().mapLookup(fd, key, out) as number);
  return out;
}

/** Possible CPUs: a per-CPU map value has one slot per possible CPU. */
export function numPossibleCpus(): number {
  return check('libbpf_num_possible_cpus', libbpf().numCpus() as number);
}


/** struct bpf_tc_hook for a clsact attach point. */
function hook(ifindex: number, attachPoint: number): Buffer {
  const b = Buffer.alloc(24);
  b.writeBigUInt64LE(24n, 0);
  b.writeInt32LE(ifindex, 8);
  b.writeInt32LE(attachPoint, 12);
  return b;
}

/** struct bpf_tc_opts. */
function tcOpts(o: { progFd?: number; flags?: number; handle: number; priority: number }): Buffer {
  const b = Buffer.alloc(32);
  b.writeBigUInt64LE(32n, 0);
  b.writeInt32LE(o.progFd ?? 0, 8);
  b.writeUInt32LE(o.flags ?? 0, 12);
  b.writeUInt32LE(o.handle, 20);
  b.writeUInt32LE(o.priority, 24);
  return b;
}

export interface TcSlot {
  ifindex: number;
  /** BPF_TC_INGRESS or BPF_TC_EGRESS. */
  direction: number;
  handle: number;
  priority: number;
}

/** Creates the clsact qdisc on ifindex (both directions share it); an existing one is fine. */
export function tcHookCreate(ifindex: number): void {
  const rc = libbpf().hookCreate(hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)) as number;
  if (rc !== -17) check('bpf_tc_hook_create', rc); // -EEXIST
}

/** Removes the whole clsact qdisc from ifindex (and every filter on it); absent is fine. */
export function tcHookDestroy(ifindex: number): void {
  const rc = libbpf().hookDestroy(hook(ifindex, BPF_TC_INGRESS | BPF_TC_EGRESS)) as number;
  if (rc !== -2 && rc !== -22) check('bpf_tc_hook_destroy', rc);
}

/** Attaches progFd at slot, atomically replacing whatever program sits at the same handle and priority. Returns the prog id. */
export function tcAttach(slot: TcSlot, progFd: number): number {
  const opts = tcOpts({ progFd, flags: BPF_TC_F_REPLACE, handle: slot.handle, priority: slot.priority });
  check('bpf_tc_attach', libbpf().attach(hook(slot.ifindex, slot.direction), opts) as number);
  return opts.readUInt32LE(16);
}

/** The id of the program at slot, or undefined when none is attached (or no clsact qdisc exists). */
export function tcQuery(slot: TcSlot): number | undefined {
  const opts = tcOpts({ handle: slot.handle, priority: slot.priority });
  const rc = libbpf().query(hook(slot.ifindex, slot.direction), opts) as number;
  if (rc === -2 || rc === -22 || rc === -19) return undefined; // ENOENT, EINVAL (no qdisc), ENODEV
  check('bpf_tc_query', rc);
  return opts.readUInt32LE(16);
}

/** Detaches the filter at slot; absent is fine. */
export function tcDetach(slot: TcSlot): void {
  const rc = libbpf().detach(hook(slot.ifindex, slot.direction), tcOpts({ handle: slot.handle, priority: slot.priority })) as number;
  if (rc !== -2 && rc !== -22 && rc !== -19) check('bpf_tc_detach', rc);
}

/** Id, tag, name and map ids of a loaded program, by fd. */
export function progInfoByFd(fd: number): ProgInfo {
  const l = libbpf();
  const ids = koffi.alloc('uint32', 16);
  try {
    const info = Buffer.alloc(80);
    info.writeUInt32LE(16, 52);
    info.writeBigUInt64LE(BigInt(koffi.address(ids) as bigint | number), 56);
    const len = [info.length];
    check('bpf_obj_get_info_by_fd', l.infoByFd(fd, info, len) as number);
    const n = Math.min(16, info.readUInt32LE(52));
    const mapIds = n ? (koffi.decode(ids, 'uint32', n) as number[]) : [];
    return { id: info.readUInt32LE(4), tag: info.subarray(8, 16).toString('hex'), name: cString(info.subarray(64, 80)), mapIds };
  } finally {
    koffi.free(ids);
  }
}

export function progInfoById(id: number): ProgInfo {
  const fd = check(`bpf_prog_get_fd_by_id ${id}`, libbpf().progFdById(id) as number);
  try {
    return progInfoByFd(fd);
  } finally {
    close(fd);
  }
}

/** An fd for map id (close it with libc close). */
export function mapFdById(id: number): number {
  return check(`bpf_map_get_fd_by_id ${id}`, libbpf().mapFdById(id) as number);
}

export function mapInfoByFd(fd: number): MapInfo {
  const info = Buffer.alloc(40);
  const len = [info.length];
  check('bpf_obj_get_info_by_fd', libbpf().infoByFd(fd, info, len) as number);
  return { id: info.readUInt32LE(4), valueSize: info.readUInt32LE(12), name: cString(info.subarray(24, 40)) };
}

function cString(b: Buffer): string {
  const end = b.indexOf(0);
  return b.subarray(0, end < 0 ? b.length : end).toString('utf8');
}
