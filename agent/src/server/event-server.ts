// The event server: HTTP/1.1 + JSON on a root-only Unix socket, answering the plugin (ADD/DEL/CHECK/GC/STATUS) and the node CLI.
// Bodies are size-capped and validated before anything acts on them; every failure answers an EventError with a CNI code.
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import { dirname } from 'node:path';
import { AgentError, describe } from '../errors.js';
import type { Logger } from '../log.js';
import {
  EVENT_PATHS, EventParseError, MAX_EVENT_BYTES, parseCniEvent, parseGcEvent,
  type AgentStatus, type EventError, type EventVerdict, type PluginLogRecord,
} from '../protocol/cni-event.js';
import type { Enroller } from '../reconcile/enroller.js';

export const PODS_PATH = '/v1/pods';

export interface EventServerDeps {
  enroller: Enroller;
  status: () => AgentStatus;
  /** Resolves once the agent has re-adopted its pods; DEL waits for it so no deletion is lost during start-up. */
  ready: Promise<void>;
  log: Logger;
}

/** How long a DEL that arrives during start-up waits for re-adoption before it is answered "try again later". */
const DEL_READY_WAIT_MS = 8000;

class HttpError extends Error {
  constructor(readonly status: number, readonly body: EventError) {
    super(body.msg);
  }
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_EVENT_BYTES) {
        reject(new HttpError(413, { code: 7, msg: `request body over ${MAX_EVENT_BYTES} bytes` }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new HttpError(400, { code: 6, msg: 'request body is not valid JSON' }));
      }
    });
    req.on('error', reject);
  });
}

export class EventServer {
  private server: http.Server | undefined;

  constructor(private readonly socketPath: string, private readonly deps: EventServerDeps) {}

  async start(): Promise<void> {
    mkdirSync(dirname(this.socketPath), { recursive: true, mode: 0o700 });
    rmSync(this.socketPath, { force: true });
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.socketPath, () => resolve());
    });
    chmodSync(this.socketPath, 0o600);
    this.server = server;
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    rmSync(this.socketPath, { force: true });
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const log = this.deps.log;
    const reply = (status: number, body: unknown): void => {
      const text = JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    };
    try {
      const route = `${req.method} ${req.url}`;
      switch (route) {
        case `GET ${EVENT_PATHS.status}`:
          return reply(200, this.deps.status());
        case `GET ${PODS_PATH}`:
          return reply(200, { pods: this.deps.enroller.list(), counters: this.deps.enroller.counters });
        case `POST ${EVENT_PATHS.add}`:
        case `POST ${EVENT_PATHS.del}`:
        case `POST ${EVENT_PATHS.check}`: {
          const ev = parseCniEvent(await readBody(req));
          this.relogPlugin(ev.pluginLog, ev.k8s.podNamespace && ev.k8s.podName ? `${ev.k8s.podNamespace}/${ev.k8s.podName}` : undefined);
          const expected = req.url === EVENT_PATHS.add ? 'ADD' : req.url === EVENT_PATHS.del ? 'DEL' : 'CHECK';
          if (ev.command !== expected) throw new EventParseError(`command ${ev.command} sent to ${req.url}`);
          if (ev.command === 'DEL') await this.waitReady();
          this.requireReady(ev.command);
          const started = performance.now();
          const e = this.deps.enroller;
          const verdict: EventVerdict = ev.command === 'ADD' ? await e.add(ev) : ev.command === 'DEL' ? await e.del(ev) : await e.check(ev);
          log.debug({ command: ev.command, pod: `${ev.k8s.podNamespace}/${ev.k8s.podName}`, result: verdict.result, ms: Math.round(performance.now() - started) }, 'plugin event handled');
          return reply(200, verdict);
        }
        case `POST ${EVENT_PATHS.gc}`: {
          const ev = parseGcEvent(await readBody(req));
          this.relogPlugin(ev.pluginLog);
          this.requireReady('GC');
          return reply(200, await this.deps.enroller.gc(ev));
        }
        default:
          return reply(404, { code: 4, msg: `unknown endpoint ${route}` } satisfies EventError);
      }
    } catch (err) {
      if (err instanceof HttpError) return reply(err.status, err.body);
      if (err instanceof EventParseError) return reply(400, { code: 7, msg: `malformed event: ${err.message}` } satisfies EventError);
      if (err instanceof AgentError) {
        log.warn({ code: err.code, error: describe(err) }, 'plugin event failed');
        return reply(err.code === 'AMB_ERR_POD_UNKNOWN' || err.code === 'AMB_ERR_NOT_READY' ? 503 : 500, {
          code: err.cniCode, msg: err.message, ...(err.details ? { details: err.details } : {}),
        } satisfies EventError);
      }
      log.error({ err }, 'plugin event crashed');
      return reply(500, { code: 999, msg: `agent internal error: ${describe(err)}` } satisfies EventError);
    }
  }

  private async waitReady(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.deps.ready, new Promise<void>((resolve) => (timer = setTimeout(resolve, DEL_READY_WAIT_MS)))]);
    clearTimeout(timer);
  }

  private requireReady(command: string): void {
    const st = this.deps.status();
    if (!st.ready) throw new AgentError('AMB_ERR_NOT_READY', `agent is not ready (${st.reason ?? 'starting'}); try again later`);
  }

  private relogPlugin(records: PluginLogRecord[] | undefined, pod?: string): void {
    if (!records?.length) return;
    const plog = this.deps.log.child({ source: 'cni-plugin', ...(pod ? { pod } : {}) });
    for (const r of records) {
      // The agent's logger supplies its own time, pid and name; the plugin's pid is kept as pluginPid.
      const { level, msg, time: _time, pid, name: _name, hostname: _host, component: _component, pod: _pod, ...rest } = r;
      if (pid !== undefined) rest.pluginPid = pid;
      const fn = level >= 50 ? plog.error : level >= 40 ? plog.warn : level >= 30 ? plog.info : plog.debug;
      fn.call(plog, rest, msg);
    }
  }
}
