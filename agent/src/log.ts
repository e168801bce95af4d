// The agent's root pino logger: JSON lines on stderr, level adjustable at runtime.
// Modules take children of it (component, pod, conn) instead of creating their own.
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function isLogLevel(v: string): v is LevelWithSilent {
  return (LOG_LEVELS as readonly string[]).includes(v);
}

export function createRootLogger(level: LevelWithSilent = 'info', name = 'ambient-node'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: true }));
}
