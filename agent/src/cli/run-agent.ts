// The `ambient-node agent` command's action: config, logger and the agent's lifecycle (signals, start, stop).
// Loaded by main.ts only when that command runs, so the query commands never load the agent's dependency tree.
import { Agent } from '../agent.js';
import { parseAgentConfig, readConfigFile, type RawConfig } from '../config.js';
import { createRootLogger } from '../log.js';
import type { DrainTally } from '../handover/protocol.js';

export async function runAgent(opts: Record<string, unknown>): Promise<void> {
  const { config, ...flags } = opts;
  const file: RawConfig = typeof config === 'string' ? await readConfigFile(config) : {};
  const cfg = parseAgentConfig(file, flags as RawConfig, { NODE_NAME: process.env.NODE_NAME });
  const log = createRootLogger(cfg.logLevel);
  let stopping = false;
  // A part failed for good while running: handled as a failed start (exit 1, the DaemonSet restarts the agent).
  const fatal = (err: Error): void => {
    if (stopping) return;
    stopping = true;
    log.fatal({ err }, 'agent failed; exiting');
    agent.stop().catch(() => undefined).finally(() => process.exit(1));
  };
  // The end of a take-over's drain: the successor runs the node now; this one stops (rules stay) and exits 0.
  const handedOver = (tally: DrainTally): void => {
    if (stopping) return;
    stopping = true;
    log.info({ ...tally }, 'handed over and drained; exiting');
    agent.stop().then(() => process.exit(0), (err: unknown) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    });
  };
  // A bad setting surfaces here, to main's exit codes, as before start.
  const agent: Agent = await Agent.create(cfg, log, { onFatal: fatal, onHandedOver: handedOver, onDeferredStop: () => stop('SIGTERM (deferred)') });
  const stop = (signal: string): void => {
    if (stopping) return;
    if (agent.deferStop()) {
      log.info({ signal }, 'handing over to a new agent: exiting once the drain ends');
      return;
    }
    stopping = true;
    log.info({ signal }, 'stopping; pod rules stay in place');
    agent.stop().then(() => process.exit(0), (err: unknown) => {
      log.error({ err }, 'stop failed');
      process.exit(1);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  try {
    await agent.start();
  } catch (err) {
    log.fatal({ err }, 'agent failed to start');
    await agent.stop().catch(() => undefined);
    process.exit(1);
  }
}
