// What main.ts hands every command: the validated invocation, the parsed config, the logger and the agent client.
// Commands return their result object (or nothing) and throw CniError; they never write to stdout themselves.
import type { Logger } from '../log.js';
import type { AgentClient } from '../agent-client.js';
import type { JsonObject, NetConf } from '../config.js';
import type { PluginLogger } from '../log.js';
import type { CniEnv } from '../version.js';

export interface CommandContext {
  env: CniEnv;
  conf: NetConf;
  /** Logger for this invocation (already carries command and container id). */
  log: Logger;
  /** Source of the pluginLog records sent along with each event. */
  logs: PluginLogger;
  agent: AgentClient;
}

/** What main.ts prints on success: a result object, or nothing (DEL, CHECK, STATUS, GC). */
export type CommandResult = JsonObject | undefined;

export type Command = (ctx: CommandContext) => Promise<CommandResult>;
