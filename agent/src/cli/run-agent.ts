// The `ambient-node agent` command's action: config, logger and the agent's lifecycle (signals, start, stop).
// Loaded by main.ts only when that command runs, so the query commands never load the agent's dependency tree.
import { Agent } from '../agent.js';
import { drainWarning, parseAgentConfig, readConfigFile, type RawConfig } from '../config.js';
import { createRootLogger } from '../log.js';
import type { DrainTally } from '../handover/protocol.js';

/** What an agent does once it has handed over and drained: exit, or idle until SIGTERM (see exitAfterHandover). Pure. */
export function afterHandover(exitAfterHandover: boolean, stopAsked: boolean): 'exit' | 'idle' {
  return exitAfterHandover || stopAsked ? 'exit' : 'idle';
}

export async function runAgent(opts: Record<string, unknown>): Promise<void> {
  const { config, ...flags } = opts;
  const file: RawConfig = typeof config === 'string' ? await readConfigFile(config) : {};
  const cfg = parseAgentConfig(file, flags as RawConfig, { NODE_NAME: process.env.NODE_NAME });
  const log = createRootLogger(cfg.logLevel);
  const warning = drainWarning(cfg);
  if (warning) log.warn({ drainSeconds: cfg.drainSeconds }, warning);
  let stopping = false;
  /** A SIGTERM/SIGINT arrived while handing over: exit once the drain ends, even with exitAfterHandover false. */
  let stopAsked = false;
  /** Handed over and idle: the next SIGTERM/SIGINT exits 0 at once. */
  let idle: ReturnType<typeof setInterval> | undefined;
  const exitWith = (code: number): never => process.exit(code);
  // A part failed for good while running: handled as a failed start (exit 1, the DaemonSet restarts the agent).
  const fatal = (err: Error): void => {
    if (stopping) return;
    stopping = true;
    log.fatal({ err }, 'agent failed; exiting');
    agent.stop().catch(() => undefined).finally(() => exitWith(1));
  };
  // The end of a take-over's drain: the successor runs the node now; this one stops (rules stay) and exits 0, or idles.
  const handedOver = (tally: DrainTally): void => {
    if (stopping) return;
    stopping = true;
    log.info({ ...tally }, afterHandover(cfg.exitAfterHandover, stopAsked) === 'exit' ? 'handed over and drained; exiting' : 'handed over and drained; stopping');
    agent.stop().then(() => {
      if (afterHandover(cfg.exitAfterHandover, stopAsked) === 'exit') exitWith(0);
      // Nothing else keeps the process up once everything is closed: a kubelet would restart a container that exits.
      idle = setInterval(() => undefined, 3600_000);
      log.info('handed over and drained; idle (not ready, no locks, no listeners) until SIGTERM');
    }, (err: unknown) => {
      log.error({ err }, 'stop failed');
      exitWith(1);
    });
  };
  // A bad setting surfaces here, to main's exit codes, as before start.
  const agent: Agent = await Agent.create(cfg, log, { onFatal: fatal, onHandedOver: handedOver, onDeferredStop: () => stop('SIGTERM (deferred)') });
  const stop = (signal: string): void => {
    if (idle) {
      log.info({ signal }, 'exiting (handed over earlier)');
      clearInterval(idle);
      exitWith(0);
    }
    if (stopping) {
      stopAsked = true; // handed over and stopping now: exit once stopped, not idle
      return;
    }
    if (agent.deferStop()) {
      stopAsked = true;
      log.info({ signal }, 'handing over to a new agent: exiting once the drain ends');
      return;
    }
    stopping = true;
    log.info({ signal }, 'stopping; pod rules stay in place');
    agent.stop().then(() => exitWith(0), (err: unknown) => {
      log.error({ err }, 'stop failed');
      exitWith(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await agent.start();
  } catch (err) {
    log.fatal({ err }, 'agent failed to start');
    await agent.stop().catch(() => undefined);
    exitWith(1);
  }
}
