// The plugin's side of the agent's event socket: one HTTP/1.1 + JSON request over a Unix socket per call,
// bounded as a whole by the configured timeout. Failures are typed; mapping them to CNI codes is the commands' job.
import { request } from 'node:http';
import {
  EVENT_PATHS,
  MAX_EVENT_BYTES,
  type AgentStatus,
  type CniEvent,
  type EventVerdict,
  type GcEvent,
} from '../../agent/src/protocol/cni-event.js';
import { AmbientError } from '../../agent/src/errors.js';
import { CniCode, CniError } from './errors.js';

/** Nobody answered: no socket, connection refused or reset, or no complete reply within the timeout. */
export class AgentUnreachableError extends AmbientError<'AMB_ERR_AGENT_UNREACHABLE'> {
  constructor(
    readonly socketPath: string,
    /** Short: "no socket file", "connection refused", "no reply within 200 ms", ... */
    readonly reason: string,
    opts: { cause?: unknown } = {},
  ) {
    super('AMB_ERR_AGENT_UNREACHABLE', `ambient-node agent unreachable at ${socketPath} (${reason})`, opts);
  }
}

/** The agent answered with a non-2xx status and an EventError body: `cniCode` is the CNI code to report. */
export class AgentReplyError extends AmbientError<'AMB_ERR_AGENT_REPLY'> {
  constructor(
    readonly status: number,
    readonly cniCode: number,
    msg: string,
    readonly details: string | undefined,
  ) {
    super('AMB_ERR_AGENT_REPLY', msg);
  }
}

/** The agent answered something this plugin cannot read (a bug or a version skew between plugin and agent). */
export class AgentProtocolError extends AmbientError<'AMB_ERR_AGENT_PROTOCOL'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_AGENT_PROTOCOL', msg, opts);
  }
}

/**
 * How a request reaches the agent when it is not over the socket: the agent runs this plugin's code in-process for the
 * native fast path (cni/shim) and answers through its own dispatcher. Same statuses and bodies as the socket.
 */
export type AgentTransport = (method: 'GET' | 'POST', path: string, body: unknown) => Promise<{ status: number; text: string }>;

const RESET_REASON = 'connection reset before a complete reply';

export class AgentClient {
  constructor(
    readonly socketPath: string,
    readonly timeoutMs: number,
    private readonly transport?: AgentTransport,
  ) {}

  async sendEvent(ev: CniEvent): Promise<EventVerdict> {
    const path = ev.command === 'ADD' ? EVENT_PATHS.add : ev.command === 'DEL' ? EVENT_PATHS.del : EVENT_PATHS.check;
    return parseVerdict(await this.call('POST', path, ev));
  }

  async sendGc(ev: GcEvent): Promise<EventVerdict> {
    return parseVerdict(await this.call('POST', EVENT_PATHS.gc, ev));
  }

  async status(): Promise<AgentStatus> {
    return parseStatus(await this.call('GET', EVENT_PATHS.status));
  }

  /** One request; resolves with the parsed 2xx body or rejects with one of the three error types above. */
  private call(method: 'GET' | 'POST', path: string, body?: CniEvent | GcEvent): Promise<unknown> {
    if (this.transport) return this.callInProcess(this.transport, method, path, body);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      let settled = false;
      let timer: NodeJS.Timeout | undefined;
      const finish = (err: Error | undefined, value?: unknown): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value);
      };
      // agent: false: one connection per call with "Connection: close", so no keep-alive socket outlives the plugin.
      const req = request(
        {
          socketPath: this.socketPath,
          method,
          path,
          agent: false,
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {}),
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_EVENT_BYTES) {
              req.destroy();
              finish(new AgentProtocolError(`agent reply exceeds ${MAX_EVENT_BYTES} bytes`));
              return;
            }
            chunks.push(chunk);
          });
          res.on('error', (err) => finish(this.unreachable(err)));
          res.on('close', () => {
            if (!res.complete) finish(new AgentUnreachableError(this.socketPath, RESET_REASON, { cause: new Error('reply cut short') }));
          });
          res.on('end', () => {
            try {
              finish(undefined, readReply(res.statusCode ?? 0, Buffer.concat(chunks).toString('utf8')));
            } catch (err) {
              finish(err instanceof Error ? err : new Error(String(err)));
            }
          });
        },
      );
      // The timeout bounds the whole exchange (connect, send, agent's work, reply), not each socket read.
      timer = setTimeout(() => {
        finish(new AgentUnreachableError(this.socketPath, `no reply within ${this.timeoutMs} ms`));
        req.destroy();
      }, this.timeoutMs);
      req.on('error', (err) => finish(this.unreachable(err)));
      req.end(payload);
    });
  }

  private async callInProcess(transport: AgentTransport, method: 'GET' | 'POST', path: string, body?: CniEvent | GcEvent): Promise<unknown> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new AgentUnreachableError(this.socketPath, `no reply within ${this.timeoutMs} ms`)), this.timeoutMs);
    });
    try {
      const reply = await Promise.race([transport(method, path, body), timeout]);
      return readReply(reply.status, reply.text);
    } finally {
      clearTimeout(timer);
    }
  }

  private unreachable(err: Error): AgentUnreachableError {
    const code = (err as NodeJS.ErrnoException).code;
    const reason =
      code === 'ENOENT'
        ? 'no socket file'
        : code === 'ECONNREFUSED'
          ? 'connection refused'
          : code === 'EACCES'
            ? 'permission denied'
            : code === 'ECONNRESET' || code === 'EPIPE'
              ? RESET_REASON
              : (code ?? err.message);
    return new AgentUnreachableError(this.socketPath, reason, { cause: err });
  }
}

/**
 * The CniError for an agent failure that is not "unreachable": the agent's own code for an EventError reply,
 * Internal for an unreadable reply. Unreachable errors are left to the caller, whose policy differs per command.
 */
export function replyToCniError(err: AgentReplyError | AgentProtocolError): CniError {
  if (err instanceof AgentProtocolError) {
    return new CniError(CniCode.Internal, `unreadable reply from the ambient-node agent: ${err.message}`, { cause: err });
  }
  return new CniError(err.cniCode as CniCode, err.message, {
    cause: err,
    ...(err.details === undefined ? {} : { details: err.details }),
  });
}

function readReply(status: number, text: string): unknown {
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch (err) {
    throw new AgentProtocolError(`HTTP ${status} with a body that is not JSON`, { cause: err });
  }
  if (status >= 200 && status < 300) return body;
  const e = asObject(body);
  const code = e?.code;
  if (!e || typeof code !== 'number' || !Number.isInteger(code) || code < 1 || code > 999 || typeof e.msg !== 'string') {
    throw new AgentProtocolError(`HTTP ${status} without an EventError body {code, msg}`);
  }
  throw new AgentReplyError(status, code, e.msg, typeof e.details === 'string' ? e.details : undefined);
}

function parseVerdict(body: unknown): EventVerdict {
  const o = asObject(body);
  const result = o?.result;
  if (!o || (result !== 'enrolled' && result !== 'skipped' && result !== 'removed' && result !== 'ok')) {
    throw new AgentProtocolError('verdict without a valid "result"');
  }
  const verdict: EventVerdict = { result };
  if (typeof o.reason === 'string') verdict.reason = o.reason;
  if (typeof o.removed === 'number') verdict.removed = o.removed;
  return verdict;
}

function parseStatus(body: unknown): AgentStatus {
  const o = asObject(body);
  if (!o || typeof o.ready !== 'boolean') throw new AgentProtocolError('status without a boolean "ready"');
  const status: AgentStatus = {
    ready: o.ready,
    node: typeof o.node === 'string' ? o.node : '',
    backend: typeof o.backend === 'string' ? o.backend : '',
    enrolled: typeof o.enrolled === 'number' ? o.enrolled : 0,
  };
  if (typeof o.reason === 'string') status.reason = o.reason;
  return status;
}

function asObject(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}
