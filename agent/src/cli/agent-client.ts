// A small HTTP-over-Unix-socket client the node CLI uses to ask the local agent for its state.
// Errors say plainly when the agent is not running, which is the most common answer on a broken node.
import http from 'node:http';

export class AgentDownError extends Error {
  readonly code = 'AMB_ERR_AGENT_DOWN';
  constructor(socketPath: string, options: { cause: unknown }) {
    super(`the ambient-node agent is not answering on ${socketPath} (${(options.cause as Error).message}); is it running on this node?`, options);
    this.name = 'AgentDownError';
  }
}

export function getJson<T>(socketPath: string, path: string, timeoutMs = 5000): Promise<T> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path, method: 'GET', timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as T);
        } catch (err) {
          reject(new Error(`agent answered ${path} with invalid JSON`, { cause: err }));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', (err) => reject(new AgentDownError(socketPath, { cause: err })));
    req.end();
  });
}
