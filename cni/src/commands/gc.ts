// CNI GC (spec 1.1.0): hand the agent the attachments the runtime still has, so it can drop state for the rest.
// Advisory: an unreachable agent is a warning and success (it reconciles on start); an agent error is reported.
import type { GcEvent } from '../../../agent/src/protocol/cni-event.js';
import { AgentProtocolError, AgentReplyError, AgentUnreachableError, replyToCniError } from '../agent-client.js';
import { CniCode, CniError } from '../errors.js';
import type { CommandContext, CommandResult } from './context.js';

export async function cmdGc(ctx: CommandContext): Promise<CommandResult> {
  const { conf, log } = ctx;
  // An absent list is not an empty list: treating it as "nothing is valid" would unenroll every pod on the node.
  if (!conf.validAttachments) {
    throw new CniError(CniCode.InvalidNetworkConfig, 'GC requires "cni.dev/valid-attachments" in the configuration');
  }

  log.info({ valid: conf.validAttachments.length }, 'sending valid attachments to agent');
  const event: GcEvent = {
    cniVersion: conf.cniVersion,
    network: conf.name,
    validAttachments: conf.validAttachments,
    pluginLog: ctx.logs.records(),
  };
  try {
    const verdict = await ctx.agent.sendGc(event);
    log.info({ result: verdict.result, removed: verdict.removed }, 'agent verdict');
  } catch (err) {
    if (err instanceof AgentUnreachableError) {
      log.warn({ err }, 'agent unreachable, GC skipped');
      return undefined;
    }
    if (err instanceof AgentReplyError || err instanceof AgentProtocolError) throw replyToCniError(err);
    throw err;
  }
  return undefined;
}
