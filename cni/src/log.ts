// The plugin's logger: pino-format JSON lines (level, time, pid, msg, fields) to stderr, synchronously, plus a copy of each
// record for the event's pluginLog. Hand-rolled rather than pino: loading pino costs ~10 ms of every CNI exec (measured).
import type { PluginLogRecord } from '../../agent/src/protocol/cni-event.js';
import type { LogLevel } from './config.js';

/** Where stderr lines go: a stream (tests) or a synchronous writer (the real process writes fd 2 with writeSync). */
export type StderrSink = NodeJS.WritableStream | ((s: string) => void);

/** The agent keeps at most this many records per event (see parseCniEvent). */
export const MAX_PLUGIN_LOG_RECORDS = 100;

/** pino's numeric levels, so the agent and log tooling read plugin lines like any other pino output. */
const LEVELS = { trace: 10, debug: 20, info: 30, warn: 40, error: 50, fatal: 60, silent: Infinity } as const;

type Fields = Record<string, unknown>;
type LogFn = (fieldsOrMsg: Fields | string, msg?: string) => void;

export interface Logger {
  trace: LogFn;
  debug: LogFn;
  info: LogFn;
  warn: LogFn;
  error: LogFn;
  fatal: LogFn;
  child(bindings: Fields): Logger;
}

export interface PluginLogger {
  log: Logger;
  /** The records emitted so far in this invocation, newest last, at most MAX_PLUGIN_LOG_RECORDS. */
  records(): PluginLogRecord[];
  setLevel(level: LogLevel): void;
}

/** Errors become {type, message, stack, code} as pino's serializer makes them; other values pass through. */
function serialise(v: unknown): unknown {
  if (!(v instanceof Error)) return v;
  const code = (v as { code?: unknown }).code;
  return { type: v.name, message: v.message, stack: v.stack, ...(code !== undefined ? { code } : {}) };
}

export function createPluginLogger(stderr: StderrSink, level: LogLevel = 'info'): PluginLogger {
  const kept: PluginLogRecord[] = [];
  const write = typeof stderr === 'function' ? stderr : (s: string) => void stderr.write(s);
  let threshold: number = LEVELS[level];

  const emit = (lvl: number, bindings: Fields, fieldsOrMsg: Fields | string, msg?: string): void => {
    if (lvl < threshold) return;
    const fields = typeof fieldsOrMsg === 'string' ? {} : fieldsOrMsg;
    const record: PluginLogRecord = { level: lvl, time: Date.now(), pid: process.pid, component: 'ambient-cni', ...bindings, msg: '' };
    for (const [k, v] of Object.entries(fields)) record[k] = serialise(v);
    record.msg = typeof fieldsOrMsg === 'string' ? fieldsOrMsg : msg ?? '';
    try {
      write(`${JSON.stringify(record)}\n`);
    } catch {
      // stderr closed or full: the record still reaches the agent through pluginLog.
    }
    kept.push(record);
    if (kept.length > MAX_PLUGIN_LOG_RECORDS) kept.shift();
  };

  const make = (bindings: Fields): Logger => ({
    trace: (f, m) => emit(LEVELS.trace, bindings, f, m),
    debug: (f, m) => emit(LEVELS.debug, bindings, f, m),
    info: (f, m) => emit(LEVELS.info, bindings, f, m),
    warn: (f, m) => emit(LEVELS.warn, bindings, f, m),
    error: (f, m) => emit(LEVELS.error, bindings, f, m),
    fatal: (f, m) => emit(LEVELS.fatal, bindings, f, m),
    child: (more) => make({ ...bindings, ...more }),
  });

  return {
    log: make({}),
    records: () => kept.slice(),
    setLevel: (l) => {
      threshold = LEVELS[l];
    },
  };
}
