// A small HTTP-over-Unix-socket client the node CLI uses to ask the local agent for its state.
// Errors say plainly when the agent is not running, which is the most common answer on a broken node.
import http from 'node:http';
import { AmbientError } from '../errors.js';

export class AgentDownError extends AmbientError<'AMB_ERR_AGENT_DOWN'> {
  constructor(socketPath: string, options: { cause: unknown }) {
    super('AMB_ERR_AGENT_DOWN', `the ambient-node agent is not answering on ${socketPath} (${(options.cause as Error).message}); is it running on this node?`, options);
  }
}

/** The agent answered, but with an error (4xx: the request named something wrong; 5xx: the agent failed). */
export class AgentRequestError extends AmbientError<'AMB_ERR_REQUEST'> {
  constructor(readonly status: number, msg: string) {
    super('AMB_ERR_REQUEST', msg);
  }
}

export function getJson<T>(socketPath: string, path: string, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        let body: unknown;
        try {
          body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        } catch (err) {
          reject(new Error(`agent answered ${path} with invalid JSON`, { cause: err }));
          return;
        }
        const status = res.statusCode ?? 0;
        if (status >= 400) {
          const msg = (body as { msg?: unknown } | null)?.msg;
          reject(new AgentRequestError(status, typeof msg === 'string' ? msg : `agent answered ${path} with HTTP ${status}`));
        } else resolve(body as T);
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => reject(new AgentDownError(socketPath, { cause: err })));
    req.end();
  });
}
