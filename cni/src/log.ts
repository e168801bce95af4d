// The plugin's pino logger: JSON lines to stderr, synchronously, and a copy of each record for the event's pluginLog.
// Never writes to stdout (that carries the CNI result) and never throws: a broken stderr must not fail the command.
import { pino, type Logger } from 'pino';
import type { PluginLogRecord } from '../../agent/src/protocol/cni-event.js';
import type { LogLevel } from './config.js';

/** Where stderr lines go: a stream (tests) or a synchronous writer (the real process writes fd 2 with writeSync). */
export type StderrSink = NodeJS.WritableStream | ((s: string) => void);

/** The agent keeps at most this many records per event (see parseCniEvent). */
export const MAX_PLUGIN_LOG_RECORDS = 100;

export interface PluginLogger {
  log: Logger;
  /** The records emitted so far in this invocation, newest last, at most MAX_PLUGIN_LOG_RECORDS. */
  records(): PluginLogRecord[];
  setLevel(level: LogLevel): void;
}

export function createPluginLogger(stderr: StderrSink, level: LogLevel = 'info'): PluginLogger {
  const kept: PluginLogRecord[] = [];
  const write = typeof stderr === 'function' ? stderr : (s: string) => void stderr.write(s);
  const destination = {
    write(line: string): void {
      try {
        write(line);
      } catch {
        // stderr closed or full: the record still reaches the agent through pluginLog.
      }
      const record = toRecord(line);
      if (!record) return;
      kept.push(record);
      if (kept.length > MAX_PLUGIN_LOG_RECORDS) kept.shift();
    },
  };
  const log = pino({ level, base: { pid: process.pid, component: 'ambient-cni' } }, destination);
  return {
    log,
    records: () => kept.slice(),
    setLevel: (l) => {
      log.level = l;
    },
  };
}

function toRecord(line: string): PluginLogRecord | undefined {
  try {
    const o: unknown = JSON.parse(line);
    if (typeof o !== 'object' || o === null || Array.isArray(o)) return undefined;
    const r = o as Record<string, unknown>;
    return {
      ...r,
      level: typeof r.level === 'number' ? r.level : 30,
      time: typeof r.time === 'number' ? r.time : Date.now(),
      msg: typeof r.msg === 'string' ? r.msg : '',
    };
  } catch {
    return undefined;
  }
}
