// The agent's listeners inside one enrolled pod (15001 outbound, 15006 inbound plaintext, 15008 HBONE) and the byte relays behind them.
// Forwarding here is transparent plain TCP: every upstream socket is made inside the pod's namespace and carries the agent mark.
import type net from 'node:net';
import type { Logger } from '../log.js';
import type { Netns } from '../platform/netns.js';
import { dialFrom, listenIn, originalDst } from '../platform/sockets.js';
import { AGENT_MARK, AGENT_PORTS, INBOUND_HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT } from '../redirect/constants.js';

export type Direction = 'outbound' | 'inbound';

export interface DirectionStats {
  opened: number;
  closed: number;
  refused: number;
  /** Bytes from the pod's app toward the peer (outbound) or from the peer toward the app (inbound). */
  bytesFromDownstream: number;
  bytesToDownstream: number;
}

export interface ForwarderStats {
  outbound: DirectionStats;
  inbound: DirectionStats;
  active: number;
}

const emptyStats = (): DirectionStats => ({ opened: 0, closed: 0, refused: 0, bytesFromDownstream: 0, bytesToDownstream: 0 });

/** Decides where an accepted connection goes, or why it is refused. Pure. */
export function upstreamFor(direction: Direction, dst: { address: string; port: number }, podIps: readonly string[]): { host: string; port: number } | { refuse: string } {
  if (direction === 'inbound') {
    if (!podIps.includes(dst.address)) return { refuse: `inbound destination ${dst.address} is not this pod (${podIps.join(', ')})` };
    if (AGENT_PORTS.includes(dst.port)) return { refuse: `port ${dst.port} is reserved for the agent` };
    return { host: dst.address, port: dst.port };
  }
  if (dst.address.startsWith('127.') && AGENT_PORTS.includes(dst.port)) return { refuse: 'connection made straight to the outbound listener (no original destination)' };
  return { host: dst.address, port: dst.port };
}

export class PodForwarder {
  readonly stats: ForwarderStats = { outbound: emptyStats(), inbound: emptyStats(), active: 0 };
  private servers: net.Server[] = [];
  private sockets = new Set<net.Socket>();
  private nextConnId = 1;

  constructor(private readonly ns: Netns, private readonly podIps: readonly string[], private readonly log: Logger) {}

  /** Opens the three listeners inside the pod. Throws (after closing any it opened) if one cannot be bound. */
  async start(): Promise<void> {
    try {
      this.servers.push(await listenIn(this.ns, { address: '127.0.0.1', port: OUTBOUND_PORT }, (s) => this.relay('outbound', s)));
      this.servers.push(await listenIn(this.ns, { address: '0.0.0.0', port: INBOUND_PLAINTEXT_PORT }, (s) => this.relay('inbound', s)));
      this.servers.push(await listenIn(this.ns, { address: '0.0.0.0', port: INBOUND_HBONE_PORT }, (s) => this.hbone(s)));
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** True while all listeners are open. */
  get listening(): boolean {
    return this.servers.length === 3 && this.servers.every((s) => s.listening);
  }

  /** Closes the listeners and every open relay. Idempotent. */
  async stop(): Promise<void> {
    const servers = this.servers;
    this.servers = [];
    for (const s of this.sockets) s.destroy();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  }

  private hbone(s: net.Socket): void {
    // HBONE (mTLS + HTTP/2 CONNECT) arrives with the secure-overlay work; until then the port is held but refuses.
    this.log.debug({ peer: `${s.remoteAddress}:${s.remotePort}` }, 'hbone listener not serving yet; closing');
    s.on('error', () => undefined);
    s.resetAndDestroy();
  }

  private relay(direction: Direction, down: net.Socket): void {
    const stats = this.stats[direction];
    const connId = this.nextConnId++;
    down.on('error', () => undefined);
    let dst: { address: string; port: number };
    try {
      dst = originalDst(down);
    } catch (err) {
      stats.refused++;
      this.log.warn({ err, direction, connId }, 'no original destination; refusing');
      down.resetAndDestroy();
      return;
    }
    const target = upstreamFor(direction, dst, this.podIps);
    const clog = this.log.child({ connId, direction, src: `${down.remoteAddress}:${down.remotePort}`, dst: `${dst.address}:${dst.port}` });
    if ('refuse' in target) {
      stats.refused++;
      clog.warn({ reason: target.refuse }, 'connection refused');
      down.resetAndDestroy();
      return;
    }
    this.sockets.add(down);
    this.stats.active++;
    stats.opened++;
    down.pause();
    const started = Date.now();
    let up: net.Socket | undefined;
    const finish = (): void => {
      if (!this.sockets.delete(down)) return;
      this.stats.active--;
      stats.closed++;
      stats.bytesFromDownstream += down.bytesRead;
      stats.bytesToDownstream += down.bytesWritten;
      clog.debug({ bytesFromDownstream: down.bytesRead, bytesToDownstream: down.bytesWritten, durationMs: Date.now() - started }, 'connection closed');
    };
    // Half-closes propagate through pipe(); only an error on one side tears down the other, so no buffered byte is lost.
    down.once('close', (hadError) => {
      if (hadError || !up) up?.destroy();
      finish();
    });
    dialFrom(this.ns, { host: target.host, port: target.port, mark: AGENT_MARK }).then(
      (sock) => {
        up = sock;
        if (down.destroyed) {
          up.destroy();
          return;
        }
        up.on('error', () => undefined);
        up.once('close', (hadError) => {
          if (hadError) down.destroy();
        });
        up.setNoDelay(true);
        down.setNoDelay(true);
        down.pipe(up);
        up.pipe(down);
        down.resume();
      },
      (err: NodeJS.ErrnoException) => {
        clog.debug({ error: err.message }, 'upstream connect failed');
        stats.refused++;
        down.resetAndDestroy();
      },
    );
  }
}
