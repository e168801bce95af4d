// The agent's log level names, without pino: config parsing and the CLI check a level without loading the logger.
// log.ts re-exports these; the pino type is a type-only import (erased at build).
import type { LevelWithSilent } from 'pino';

export const LOG_LEVELS: readonly LevelWithSilent[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function isLogLevel(v: string): v is LevelWithSilent {
  return (LOG_LEVELS as readonly string[]).includes(v);
}
