// The event server: HTTP/1.1 + JSON on a root-only Unix socket, answering the plugin (ADD/DEL/CHECK/GC/STATUS) and the node CLI.
// Bodies are size-capped and validated before anything acts on them; every failure answers an EventError with a CNI code.
// During a take-over (handover/) it hands the protocol's upgraded connection to the agent, holds plugin events, then
// forwards them to the successor; the socket path is replaced by rename, so it never stops answering.
import { chmodSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import type { Duplex } from 'node:stream';
import { basename, dirname, join } from 'node:path';
import { CniCode } from '../../../cni/src/cni-codes.js';
import { AgentError, AmbientError, describe } from '../errors.js';
import type { Logger } from '../log.js';
import {
  EVENT_PATHS, EventParseError, MAX_EVENT_BYTES, parseCniEvent, parseGcEvent,
  type AgentStatus, type EventError, type EventVerdict, type PluginLogRecord,
} from '../protocol/cni-event.js';
import type { Enroller, PodRulesReport } from '../reconcile/enroller.js';
import type { RuleDrift } from '../redirect/backend.js';
import type { PodInfo } from '../workload/types.js';
import { checkPolicy, checkServicePolicy, parsePolicyCheckArgs, PolicyCheckArgError, type PolicyCheckQuery } from '../policy/check.js';
import type { WorkloadSource } from '../workload/source.js';
import type { WorkloadDirectory } from '../workload/directory.js';
import { run as runPlugin } from '../../../cni/src/main.js';
import { CNI_ENV_VARS } from '../../../cni/src/shim-constants.js';
import { CERTS_PATH, CONNS_PATH, EXEC_PATH, PODS_PATH, POLICY_CHECK_PATH, RULES_PATH, SERVICES_PATH } from '../protocol/query-paths.js';
import { HANDOVER_PATH, HANDOVER_PROTOCOL, newHandoverToken } from '../handover/protocol.js';

export { CERTS_PATH, CONNS_PATH, EXEC_PATH, PODS_PATH, POLICY_CHECK_PATH, RULES_PATH, SERVICES_PATH };

/** Validates the shim's {env, stdin}: only CNI_* variables pass, so the in-process run sees what a real exec would. */
export function parseExecRequest(body: unknown): { env: Record<string, string>; stdin: string } {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new EventParseError('exec request must be an object');
  const o = body as Record<string, unknown>;
  if (typeof o.stdin !== 'string') throw new EventParseError('field "stdin" must be a string');
  const rawEnv = o.env;
  if (typeof rawEnv !== 'object' || rawEnv === null || Array.isArray(rawEnv)) throw new EventParseError('field "env" must be an object');
  const env: Record<string, string> = {};
  for (const k of CNI_ENV_VARS) {
    const v = (rawEnv as Record<string, unknown>)[k];
    if (typeof v === 'string') env[k] = v;
  }
  return { env, stdin: o.stdin };
}

export interface EventServerDeps {
  enroller: Enroller;
  status: () => AgentStatus;
  /** Identity state for the CLI and tests (certificates without private keys). */
  certs: () => unknown;
  /** Resolves once the agent has re-adopted its pods; DEL waits for it so no deletion is lost during start-up. */
  ready: Promise<void>;
  log: Logger;
  /** Told of every plugin request (ADD, DEL, CHECK, GC) and its result (the verdict's result, or "error"), for metrics. */
  onPluginRequest?: (command: string, result: string) => void;
  /** For `rules`: the node-side rules' drift. */
  verifyHost?: () => Promise<RuleDrift>;
  /** For `policy check`: the pods and policies, and the trust domain identities live in. */
  source?: WorkloadSource;
  trustDomain?: string;
  /** For `services` and `policy check` on a Service: the Service table and the mesh workloads. */
  directory?: Pick<WorkloadDirectory, 'services' | 'serviceViews' | 'lookup'>;
  /** A successor's take-over connection, upgraded (the protocol's bytes after the 101 are the agent's). */
  handover?: (conn: Duplex, head: Buffer) => void;
}

/** Where held plugin events go when the hold ends: handled here, or forwarded to the agent now at the socket path. */
export type HoldOutcome = 'local' | 'forward';

/** The answer to GET /v1/rules. */
export interface RulesReply {
  pod: string;
  attachments: PodRulesReport[];
  node: RuleDrift | { error: string };
}

/** How long a DEL that arrives during start-up waits for re-adoption before it is answered "try again later". */
const DEL_READY_WAIT_MS = 8000;

/** A request the server refuses before routing it (too large, not JSON): answered with `status` and `body`. */
class HttpError extends AmbientError<'AMB_ERR_BAD_REQUEST'> {
  constructor(readonly status: number, readonly body: EventError) {
    super('AMB_ERR_BAD_REQUEST', body.msg);
  }
}

/** The client hung up before its request was complete: nothing to answer, and nothing wrong with the agent. */
class ClientGoneError extends AmbientError<'AMB_ERR_CLIENT_GONE'> {
  constructor(msg: string) {
    super('AMB_ERR_CLIENT_GONE', msg);
  }
}

function readBody(req: http.IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_EVENT_BYTES) {
        reject(new HttpError(413, { code: CniCode.InvalidNetworkConfig, msg: `request body over ${MAX_EVENT_BYTES} bytes` }));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(new HttpError(400, { code: CniCode.DecodingFailure, msg: 'request body is not valid JSON' }));
      }
    });
    req.on('error', (err) => reject(new ClientGoneError(describe(err))));
  });
}

/** True for the name of a staging socket beside the socket `base` (`<base>.<token or an older agent's pid>.new`). Pure. */
export function isStagingName(base: string, name: string): boolean {
  return name.startsWith(`${base}.`) && /^\.[0-9a-f]+\.new$/.test(name.slice(base.length));
}

const PLUGIN_COMMANDS: Record<string, string> = {
  [EVENT_PATHS.add]: 'ADD', [EVENT_PATHS.del]: 'DEL', [EVENT_PATHS.check]: 'CHECK', [EVENT_PATHS.gc]: 'GC',
};

const EVENT_HEADERS_TIMEOUT_MS = 10_000;
const EVENT_REQUEST_TIMEOUT_MS = 30_000;
const EVENT_MAX_CONNECTIONS = 1024;

export class EventServer {
  private server: http.Server | undefined;
  /** CNI invocations run in-process for the native shim (the fast path). */
  private pluginExecs = 0;
  /** Where the server listens until publish() renames it to the socket path. */
  private stagingPath: string;
  /** The socket file this server published (its inode): stop() removes the path only while it is still ours. */
  private published: number | undefined;
  /** Plugin events being handled here, and who waits for there to be none. */
  private inFlight = 0;
  private idleWaiters: (() => void)[] = [];
  /** Set while plugin events are held (a take-over in progress). */
  private hold: { outcome: Promise<HoldOutcome>; end: (o: HoldOutcome) => void } | undefined;

  constructor(private readonly socketPath: string, private readonly deps: EventServerDeps) {
    // Random, not the pid: two agents in pods have their own PID namespaces (both often PID 1) and must not share it.
    this.stagingPath = `${socketPath}.${newHandoverToken()}.new`;
  }

  /**
   * Listens on a staging path beside the socket path, then (publish, the default) renames it over the socket path: a
   * running agent's socket is replaced in one step, never absent. A successor publishes only once it is ready.
   */
  async start(opts: { publish?: boolean } = {}): Promise<void> {
    mkdirSync(dirname(this.socketPath), { recursive: true, mode: 0o700 });
    this.removeStaleStaging();
    this.server = await this.listen();
    if (opts.publish ?? true) this.publish();
  }

  /**
   * Publishes this agent's socket again when the path no longer names it: a successor that published and then died
   * before the take-over completed left its dead socket there, and the plugin would reach no one. A Unix socket cannot be
   * bound to a second path, so a fresh listener takes the path; the old one stops accepting (open clients finish).
   */
  async reclaimPath(): Promise<boolean> {
    const old = this.server;
    if (!old || this.ownsPath()) return false;
    this.stagingPath = `${this.socketPath}.${newHandoverToken()}.new`;
    this.server = await this.listen();
    this.publish();
    old.close();
    return true;
  }

  /** An HTTP server for plugin events, the CLI and the hand-over upgrade, listening on the staging path (mode 0600). */
  private async listen(): Promise<http.Server> {
    // A client that dribbles its request (slowloris) is dropped after 10 s for the headers and 30 s for the whole request
    // (checked every 2 s), and at most 1,024 clients are held at once: bounded even though the socket is root's only.
    const server = http.createServer(
      { headersTimeout: EVENT_HEADERS_TIMEOUT_MS, requestTimeout: EVENT_REQUEST_TIMEOUT_MS, connectionsCheckingInterval: 2000 },
      (req, res) => void this.handle(req, res),
    );
    server.keepAliveTimeout = 5000;
    server.maxConnections = EVENT_MAX_CONNECTIONS;
    // A client may half-close once its request is sent; Node's default would then end the socket before the verdict is
    // written (an ADD done, its answer lost). httpAllowHalfOpen (a long-standing http.Server field, not in @types/node)
    // keeps the write side open until the reply.
    (server as http.Server & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.stagingPath, () => resolve());
    });
    chmodSync(this.stagingPath, 0o600);
    server.on('upgrade', (req: http.IncomingMessage, conn: Duplex, head: Buffer) => {
      conn.on('error', () => undefined);
      if (req.url !== HANDOVER_PATH || req.headers.upgrade !== HANDOVER_PROTOCOL || !this.deps.handover) {
        conn.end('HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      conn.write(`HTTP/1.1 101 Switching Protocols\r\nupgrade: ${HANDOVER_PROTOCOL}\r\nconnection: upgrade\r\n\r\n`);
      this.deps.handover(conn, head);
    });
    return server;
  }

  /**
   * Staging sockets left by agents that died before they published (a successor killed during its take-over). Every
   * other one is stale: an agent has a staging socket only while it starts, holding handover.lock, as the caller does.
   */
  private removeStaleStaging(): void {
    const dir = dirname(this.socketPath);
    for (const name of readdirSync(dir)) {
      if (isStagingName(basename(this.socketPath), name) && join(dir, name) !== this.stagingPath) rmSync(join(dir, name), { force: true });
    }
  }

  /** Renames the staging socket over the socket path: from now on new clients reach this server. */
  publish(): void {
    renameSync(this.stagingPath, this.socketPath);
    this.published = statSync(this.socketPath).ino;
  }

  /** True while the socket path names the socket this server published. */
  private ownsPath(): boolean {
    try {
      return this.published !== undefined && statSync(this.socketPath).ino === this.published;
    } catch {
      return false;
    }
  }

  async stop(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    if (!s) return;
    this.endHold('local');
    s.closeAllConnections();
    await new Promise<void>((resolve) => s.close(() => resolve()));
    if (this.ownsPath()) rmSync(this.socketPath, { force: true });
    rmSync(this.stagingPath, { force: true });
  }

  /** Holds plugin events from now on (they wait, unanswered) until endHold(). */
  holdPluginEvents(): void {
    if (this.hold) return;
    let end!: (o: HoldOutcome) => void;
    const outcome = new Promise<HoldOutcome>((resolve) => (end = resolve));
    this.hold = { outcome, end };
  }

  /** Ends the hold: held events (and later ones) are handled here ('local') or forwarded to the socket path's agent. */
  endHold(outcome: HoldOutcome): void {
    const h = this.hold;
    if (!h) return;
    if (outcome === 'local') this.hold = undefined;
    h.end(outcome);
  }

  /** Resolves once no plugin event is being handled or forwarded here (held ones do not count). */
  idle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const reply = (status: number, contentType: string, payload: string | Buffer): void => {
      res.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(payload) });
      res.end(payload);
    };
    let counted = false;
    try {
      const body = req.method === 'POST' ? await readBody(req) : undefined;
      const plugin = req.method === 'POST' && (req.url === EXEC_PATH || PLUGIN_COMMANDS[req.url ?? ''] !== undefined);
      if (plugin && this.hold && (await this.hold.outcome) === 'forward') {
        counted = true;
        this.inFlight++; // the agent waits for these too before it exits
        const f = await this.forward(req.url ?? '', body);
        this.deps.log.info({ url: req.url, status: f.status }, 'plugin event held during a take-over, forwarded to the successor');
        return reply(f.status, f.contentType, f.payload);
      }
      if (plugin) {
        counted = true;
        this.inFlight++;
      }
      if (req.method === 'POST' && req.url === EXEC_PATH) {
        return reply(200, 'application/octet-stream', await this.execPlugin(body));
      }
      const r = await this.dispatch(req.method ?? '', req.url ?? '', body);
      return reply(r.status, 'application/json', JSON.stringify(r.body));
    } catch (err) {
      if (err instanceof ClientGoneError) {
        this.deps.log.debug({ method: req.method, url: req.url?.slice(0, 200), error: err.message }, 'client went away before its request was complete');
        res.destroy();
        return;
      }
      if (err instanceof HttpError) return reply(err.status, 'application/json', JSON.stringify(err.body));
      if (err instanceof EventParseError) return reply(400, 'application/json', JSON.stringify({ code: CniCode.InvalidNetworkConfig, msg: `malformed request: ${err.message}` }));
      this.deps.log.error({ err }, 'request crashed');
      return reply(500, 'application/json', JSON.stringify({ code: CniCode.Internal, msg: `agent internal error: ${describe(err)}` }));
    } finally {
      if (counted && --this.inFlight === 0) for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  /** Sends a held plugin event to the agent now at the socket path (the successor) and returns its answer as it is. */
  private forward(url: string, body: unknown): Promise<{ status: number; contentType: string; payload: Buffer }> {
    const payload = JSON.stringify(body);
    return new Promise((resolve) => {
      const failed = (err: Error): void => {
        this.deps.log.warn({ url, error: err.message }, 'forwarding a held plugin event to the successor failed');
        const e: EventError = { code: CniCode.TryAgainLater, msg: `agent take-over in progress and the new agent did not answer (${err.message}); try again later` };
        resolve({ status: 503, contentType: 'application/json', payload: Buffer.from(JSON.stringify(e)) });
      };
      const req = http.request({
        socketPath: this.socketPath, method: 'POST', path: url, timeout: EVENT_REQUEST_TIMEOUT_MS,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 502, contentType: res.headers['content-type'] ?? 'application/json', payload: Buffer.concat(chunks) }));
        res.on('error', failed);
      });
      req.on('timeout', () => req.destroy(new Error('no answer in time')));
      req.on('error', failed);
      req.end(payload);
    });
  }

  private async rules(pod: string): Promise<{ status: number; body: unknown }> {
    const m = /^([^/]+)\/([^/]+)$/.exec(pod);
    if (!m) return { status: 400, body: { code: CniCode.InvalidNetworkConfig, msg: `pod must be <namespace>/<name>, got ${JSON.stringify(pod)}` } satisfies EventError };
    const attachments = await this.deps.enroller.rules(m[1] as string, m[2] as string);
    if (!attachments.length) return { status: 404, body: { code: CniCode.InvalidEnv, msg: `pod ${pod} is not known to the agent on this node` } satisfies EventError };
    const node = this.deps.verifyHost ? await this.deps.verifyHost().catch((err: unknown) => ({ error: describe(err) })) : { error: 'not available' };
    return { status: 200, body: { pod, attachments, node } satisfies RulesReply };
  }

  private policyCheck(query: URLSearchParams): { status: number; body: unknown } {
    const { source, trustDomain } = this.deps;
    if (!source || !trustDomain) return { status: 404, body: { code: CniCode.InvalidEnv, msg: 'policy check is not available' } satisfies EventError };
    let q;
    try {
      q = parsePolicyCheckArgs(query.get('from') ?? '', query.get('to') ?? '', query.get('fromIp') ?? undefined);
    } catch (err) {
      if (err instanceof PolicyCheckArgError) return { status: 400, body: { code: CniCode.InvalidNetworkConfig, msg: err.message } satisfies EventError };
      throw err;
    }
    const policies = { authorization: source.authorizationPolicies(), peerAuthentication: source.peerAuthentications() };
    const { namespace, name } = q.to;
    const service = q.to.kind !== 'pod' ? source.services().find((s) => s.namespace === namespace && s.name === name) : undefined;
    const pod = q.to.kind !== 'service' ? source.getPod(namespace, name) : undefined;
    // A Service wins, unless only the pod of the same name has that port (`kubectl run x --expose` makes both).
    const servicePort = service?.ports.some((p) => p.port === q.to.port && p.protocol === 'TCP') ?? false;
    if (q.to.kind === 'service' || (service && (servicePort || !pod))) return this.servicePolicyCheck(q, service !== undefined, policies, trustDomain);
    if (!pod) return { status: 404, body: { code: CniCode.InvalidEnv, msg: `no Service or pod ${namespace}/${name} in the workload source` } satisfies EventError };
    return { status: 200, body: checkPolicy(q, pod, policies, trustDomain) };
  }

  private servicePolicyCheck(
    q: PolicyCheckQuery,
    exists: boolean,
    policies: Parameters<typeof checkServicePolicy>[3],
    trustDomain: string,
  ): { status: number; body: unknown } {
    const { source, directory } = this.deps;
    const { namespace, name, port } = q.to;
    const notFound = (msg: string): { status: number; body: EventError } => ({ status: 404, body: { code: CniCode.InvalidEnv, msg } });
    if (!source || !directory) return notFound('service checks are not available');
    if (!exists) return notFound(`Service ${namespace}/${name} is not in the workload source`);
    const all = directory.services().filter((e) => e.service.namespace === namespace && e.service.name === name);
    const entries = all.filter((e) => e.port.port === port);
    if (entries.length === 0) {
      const ports = [...new Set(all.map((e) => e.port.port))];
      return notFound(ports.length
        ? `Service ${namespace}/${name} has no TCP port ${port} (its ports: ${ports.join(', ')})`
        : `Service ${namespace}/${name} has no ClusterIP and TCP port the agent resolves (headless, ExternalName or no TCP ports): check its pods`);
    }
    const podsByIp = new Map<string, PodInfo>();
    for (const p of source.pods()) for (const ip of p.podIPs) podsByIp.set(ip, p);
    const resolve = (ep: { ip: string; targetRef?: string }): { pod?: PodInfo; mesh: boolean } => {
      const ref = ep.targetRef?.split('/');
      const byRef = ref?.[0] === 'Pod' && ref[1] && ref[2] ? source.getPod(ref[1], ref[2]) : undefined;
      const pod = byRef ?? podsByIp.get(ep.ip);
      return { ...(pod ? { pod } : {}), mesh: directory.lookup(ep.ip) !== undefined };
    };
    return { status: 200, body: checkServicePolicy(q, entries, resolve, policies, trustDomain) };
  }

  /** Routes one parsed request; shared by the socket and the in-process plugin run of the native fast path. */
  async dispatch(method: string, url: string, body: unknown): Promise<{ status: number; body: unknown }> {
    const log = this.deps.log;
    const command = method === 'POST' ? PLUGIN_COMMANDS[url] : undefined;
    const r = await this.route(method, url, body);
    if (command) {
      const result = r.status === 200 ? String((r.body as { result?: unknown }).result ?? 'ok') : 'error';
      try {
        this.deps.onPluginRequest?.(command, result);
      } catch (err) {
        log.error({ err }, 'plugin request observer failed');
      }
    }
    return r;
  }

  private async route(method: string, url: string, body: unknown): Promise<{ status: number; body: unknown }> {
    const log = this.deps.log;
    try {
      const parsed = new URL(url, 'http://agent');
      const query = parsed.searchParams;
      const route = `${method} ${parsed.pathname}`;
      switch (route) {
        case `GET ${EVENT_PATHS.status}`:
          return { status: 200, body: this.deps.status() };
        case `GET ${CERTS_PATH}`:
          return { status: 200, body: this.deps.certs() };
        case `GET ${PODS_PATH}`:
          return { status: 200, body: { pods: this.deps.enroller.list(), counters: { ...this.deps.enroller.counters, pluginExecs: this.pluginExecs } } };
        case `GET ${CONNS_PATH}`:
          return { status: 200, body: { connections: this.deps.enroller.connections() } };
        case `GET ${RULES_PATH}`:
          return await this.rules(query.get('pod') ?? '');
        case `GET ${POLICY_CHECK_PATH}`:
          return this.policyCheck(query);
        case `GET ${SERVICES_PATH}`:
          return { status: 200, body: { services: this.deps.directory?.serviceViews() ?? [] } };
        case `POST ${EVENT_PATHS.add}`:
        case `POST ${EVENT_PATHS.del}`:
        case `POST ${EVENT_PATHS.check}`: {
          const ev = parseCniEvent(body);
          this.relogPlugin(ev.pluginLog, ev.k8s.podNamespace && ev.k8s.podName ? `${ev.k8s.podNamespace}/${ev.k8s.podName}` : undefined);
          const expected = url === EVENT_PATHS.add ? 'ADD' : url === EVENT_PATHS.del ? 'DEL' : 'CHECK';
          if (ev.command !== expected) throw new EventParseError(`command ${ev.command} sent to ${url}`);
          if (ev.command === 'DEL') await this.waitReady();
          this.requireReady(ev.command);
          const started = performance.now();
          const e = this.deps.enroller;
          const verdict: EventVerdict = ev.command === 'ADD' ? await e.add(ev) : ev.command === 'DEL' ? await e.del(ev) : await e.check(ev);
          log.debug({ command: ev.command, pod: `${ev.k8s.podNamespace}/${ev.k8s.podName}`, result: verdict.result, ms: Math.round(performance.now() - started) }, 'plugin event handled');
          return { status: 200, body: verdict };
        }
        case `POST ${EVENT_PATHS.gc}`: {
          const ev = parseGcEvent(body);
          this.relogPlugin(ev.pluginLog);
          this.requireReady('GC');
          return { status: 200, body: await this.deps.enroller.gc(ev) };
        }
        default:
          return { status: 404, body: { code: CniCode.InvalidEnv, msg: `unknown endpoint ${route}` } satisfies EventError };
      }
    } catch (err) {
      if (err instanceof EventParseError) return { status: 400, body: { code: CniCode.InvalidNetworkConfig, msg: `malformed event: ${err.message}` } satisfies EventError };
      if (err instanceof AgentError) {
        log.warn({ code: err.code, error: describe(err) }, 'plugin event failed');
        return {
          status: err.code === 'AMB_ERR_POD_UNKNOWN' || err.code === 'AMB_ERR_NOT_READY' ? 503 : 500,
          body: { code: err.cniCode, msg: err.message, ...(err.details ? { details: err.details } : {}) } satisfies EventError,
        };
      }
      log.error({ err }, 'plugin event crashed');
      return { status: 500, body: { code: CniCode.Internal, msg: `agent internal error: ${describe(err)}` } satisfies EventError };
    }
  }

  /**
   * The native shim's fast path: run the TypeScript plugin in-process on the invocation it forwarded, with requests
   * going straight to dispatch(). Reply framing (parsed by cni/shim): "<exit>\n<stdout bytes>\n<stdout><stderr>".
   */
  private async execPlugin(body: unknown): Promise<Buffer> {
    const inv = parseExecRequest(body);
    this.pluginExecs++;
    let out = '';
    let err = '';
    const code = await runPlugin({
      env: inv.env,
      stdin: inv.stdin,
      stdout: (s) => (out += s),
      stderr: (s) => (err += s),
      transport: async (method, path, reqBody) => {
        const r = await this.dispatch(method, path, reqBody);
        return { status: r.status, text: JSON.stringify(r.body) };
      },
    });
    const outBuf = Buffer.from(out);
    return Buffer.concat([Buffer.from(`${code}\n${outBuf.length}\n`), outBuf, Buffer.from(err)]);
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
