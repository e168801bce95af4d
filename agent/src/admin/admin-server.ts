// The agent's loopback HTTP endpoints: Prometheus metrics (:15020), readiness (:15021) and the admin API (:15000:
// /config_dump, /logging). Bound to 127.0.0.1 only; the agent runs in the node's network namespace.
// SO_REUSEPORT (asked of listenFdIn): a successor agent binds the same ports while this one runs; this one closes its own on hand-over.
import http from 'node:http';
import { close } from '../platform/libc.js';
import { selfNetns } from '../platform/netns.js';
import { listenFdIn } from '../platform/sockets.js';
import type { Logger } from '../log.js';
import { isLogLevel, setLogLevel } from '../log.js';
import type { AgentMetrics } from './metrics.js';

export interface AdminDeps {
  ports: { admin: number; metrics: number; readiness: number };
  metrics: AgentMetrics;
  ready: () => { ready: boolean; reason?: string | undefined };
  /** Everything /config_dump shows; must hold no private key. */
  configDump: () => unknown;
  /** The root logger whose level /logging reads and changes. */
  rootLog: Logger;
  log: Logger;
}

type Handler = (req: http.IncomingMessage, url: URL) => Promise<{ status: number; type?: string; body: string }> | { status: number; type?: string; body: string };

const json = (status: number, v: unknown): { status: number; type: string; body: string } => ({ status, type: 'application/json', body: `${JSON.stringify(v, null, 2)}\n` });

export class AdminServer {
  private servers: http.Server[] = [];

  constructor(private readonly deps: AdminDeps) {}

  async start(): Promise<void> {
    const d = this.deps;
    const metrics: Handler = async (req, url) => {
      if (req.method !== 'GET' || (url.pathname !== '/metrics' && url.pathname !== '/stats/prometheus')) return json(404, { error: `unknown endpoint ${req.method} ${url.pathname}` });
      return { status: 200, type: d.metrics.contentType, body: await d.metrics.text() };
    };
    const readiness: Handler = (req, url) => {
      if (url.pathname !== '/healthz/ready') return json(404, { error: `unknown endpoint ${req.method} ${url.pathname}` });
      const r = d.ready();
      return r.ready ? { status: 200, type: 'text/plain', body: 'ready\n' } : { status: 503, type: 'text/plain', body: `not ready: ${r.reason ?? ''}\n` };
    };
    const admin: Handler = (req, url) => {
      if (req.method === 'GET' && url.pathname === '/config_dump') return json(200, d.configDump());
      if (url.pathname === '/logging') {
        if (req.method === 'GET') return json(200, { level: d.rootLog.level });
        if (req.method === 'POST') {
          const level = url.searchParams.get('level') ?? '';
          if (!isLogLevel(level)) return json(400, { error: `level must be one of fatal, error, warn, info, debug, trace, silent; got ${JSON.stringify(level)}` });
          const previous = d.rootLog.level;
          setLogLevel(d.rootLog, level);
          d.log.warn({ previous, level }, 'log level changed through the admin API');
          return json(200, { level });
        }
      }
      return json(404, { error: `unknown endpoint ${req.method} ${url.pathname}` });
    };
    try {
      for (const [port, handler] of [[d.ports.metrics, metrics], [d.ports.readiness, readiness], [d.ports.admin, admin]] as const) {
        this.servers.push(await this.listen(port, handler));
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  private async listen(port: number, handler: Handler): Promise<http.Server> {
    const server = http.createServer((req, res) => {
      req.resume();
      Promise.resolve()
        .then(() => handler(req, new URL(req.url ?? '/', 'http://127.0.0.1')))
        .catch((err: unknown) => {
          this.deps.log.error({ err }, 'admin request crashed');
          return json(500, { error: 'internal error' });
        })
        .then((r) => {
          res.writeHead(r.status, { 'content-type': r.type ?? 'text/plain', 'content-length': Buffer.byteLength(r.body) });
          res.end(r.body);
        });
    });
    server.keepAliveTimeout = 5000;
    let fd: number;
    try {
      fd = listenFdIn(selfNetns(), { address: '127.0.0.1', port, reusePort: true });
    } catch (err) {
      throw new Error(`cannot listen on 127.0.0.1:${port}: ${(err as Error).message}`, { cause: err });
    }
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err: Error) => {
        close(fd);
        reject(new Error(`cannot listen on 127.0.0.1:${port}: ${err.message}`, { cause: err }));
      });
      server.listen({ fd }, () => resolve());
    });
    return server;
  }

  async stop(): Promise<void> {
    const servers = this.servers;
    this.servers = [];
    await Promise.all(servers.map((s) => {
      s.closeAllConnections();
      return new Promise<void>((resolve) => s.close(() => resolve()));
    }));
  }
}
