// The agent's own HTTP to the API server: one node:https (or node:http) keep-alive pool with the cluster's TLS settings,
// one request at a time in, its status and (decompressed) body stream out; aborting a request destroys its socket.
import { Agent as HttpAgent, request as httpRequest, type ClientRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { pipeline, type Readable } from 'node:stream';
import { createGunzip, createInflate } from 'node:zlib';

/** One request as the client hands it to a transport; `headers` already carry the credentials. */
export interface KubeHttpRequest {
  method: 'GET' | 'PATCH';
  url: URL;
  headers: Record<string, string>;
  body?: string;
  /** Ask for a gzip-compressed body (lists and patches; never a watch, whose events must arrive as they are sent). */
  compressed: boolean;
  /** Aborting it fails the pending request, or ends the body with an error, and frees the connection. */
  signal: AbortSignal;
}

/** The response: status first, then the body's bytes (already decompressed). */
export interface KubeHttpResponse {
  readonly status: number;
  readonly body: AsyncIterable<Uint8Array>;
  /** Stops reading: the connection is closed rather than returned to the pool unless the body was read to its end. */
  discard(): void;
}

export interface KubeHttpTransport {
  send(request: KubeHttpRequest): Promise<KubeHttpResponse>;
  close(): Promise<void>;
}

/** TLS settings of the pool; an unset field keeps Node's default (NODE_TLS_REJECT_UNAUTHORIZED keeps its meaning). */
export interface KubeTlsOptions {
  ca?: string;
  cert?: string;
  key?: string;
  rejectUnauthorized?: false;
  servername?: string;
}

/** At most this many connections to the API server: 7 long-lived watches, lists, and pod status patches beyond that queue. */
export const MAX_API_CONNECTIONS = 32;

/** Idle pooled connections kept for reuse, and for how long. */
const MAX_IDLE_CONNECTIONS = 4;
const IDLE_CONNECTION_TIMEOUT_MS = 30_000;

/** TCP keepalive on API connections, as client-go (a 60 s one races 60 s load-balancer idle timeouts). */
const KEEPALIVE_INITIAL_DELAY_MS = 30_000;

/** A transport over one keep-alive pool for `server`'s scheme (https, or http with insecure-skip-tls-verify). */
export function nodeHttpTransport(server: URL, tls: KubeTlsOptions): KubeHttpTransport {
  const secure = server.protocol === 'https:';
  const poolOptions = {
    keepAlive: true,
    keepAliveMsecs: KEEPALIVE_INITIAL_DELAY_MS,
    maxSockets: MAX_API_CONNECTIONS,
    maxFreeSockets: MAX_IDLE_CONNECTIONS,
    timeout: IDLE_CONNECTION_TIMEOUT_MS,
    scheduling: 'lifo' as const,
  };
  const agent = secure ? new HttpsAgent({ ...poolOptions, ...tls }) : new HttpAgent(poolOptions);
  const send = secure ? httpsRequest : httpRequest;
  return {
    send: (request) => sendOne(request, (options, onResponse) => send(request.url, { ...options, agent }, onResponse)),
    close: async () => agent.destroy(),
  };
}

type StartRequest = (options: { method: string; headers: Record<string, string> }, onResponse: (res: IncomingMessage) => void) => ClientRequest;

function sendOne(request: KubeHttpRequest, start: StartRequest): Promise<KubeHttpResponse> {
  return new Promise<KubeHttpResponse>((resolve, reject) => {
    const { signal } = request;
    if (signal.aborted) return reject(signal.reason);
    const headers: Record<string, string> = { ...request.headers };
    if (request.compressed) headers['accept-encoding'] = 'gzip';
    if (request.body !== undefined) headers['content-length'] = String(Buffer.byteLength(request.body));
    let response: IncomingMessage | undefined;
    let body: Readable | undefined;
    const onAbort = (): void => {
      // The body first: destroying only the request would let a half-read body end without an error.
      body?.destroy(signal.reason);
      response?.destroy(signal.reason);
      req.destroy(signal.reason);
      reject(signal.reason);
    };
    const req = start({ method: request.method, headers }, (res) => {
      response = res;
      res.on('error', () => undefined); // reported through the body stream or the request; never an unhandled 'error'
      body = decoded(res);
      const stream = body;
      resolve({
        status: res.statusCode ?? 0,
        body: stream,
        discard: () => {
          signal.removeEventListener('abort', onAbort);
          if (!res.complete) res.destroy();
          stream.destroy();
        },
      });
    });
    req.on('error', (err) => {
      signal.removeEventListener('abort', onAbort);
      reject(err);
    });
    req.on('close', () => {
      if (response?.complete) signal.removeEventListener('abort', onAbort);
    });
    signal.addEventListener('abort', onAbort, { once: true });
    req.end(request.body);
  });
}

/** The body as the server meant it: gunzipped or inflated when it says so. */
function decoded(res: IncomingMessage): Readable {
  const encoding = res.headers['content-encoding']?.trim().toLowerCase();
  if (encoding !== 'gzip' && encoding !== 'deflate') return res;
  const decoder = encoding === 'gzip' ? createGunzip() : createInflate();
  pipeline(res, decoder, () => undefined); // an error destroys both; the reader sees it on `decoder`
  return decoder;
}
