// CNI STATUS (spec 1.1.0): the plugin can service ADD only while the agent is reachable and ready.
// Prints nothing when ready; otherwise PluginNotAvailable (50) with the reason, so runtimes hold off new pods.
import { AgentProtocolError, AgentReplyError, AgentUnreachableError, replyToCniError } from '../agent-client.js';
import { CniCode, CniError } from '../errors.js';
import type { CommandContext, CommandResult } from './context.js';

export async function cmdStatus(ctx: CommandContext): Promise<CommandResult> {
  const status = await ctx.agent.status().catch((err: unknown): never => {
    throw notAvailable(err);
  });

  if (!status.ready) {
    const where = status.node ? ` on node ${status.node}` : '';
    throw new CniError(
      CniCode.PluginNotAvailable,
      `ambient-node agent${where} is not ready: ${status.reason ?? 'no reason given'}`,
    );
  }
  ctx.log.debug({ node: status.node, backend: status.backend, enrolled: status.enrolled }, 'agent ready');
  return undefined;
}

function notAvailable(err: unknown): unknown {
  if (err instanceof AgentUnreachableError) {
    return new CniError(CniCode.PluginNotAvailable, err.message, {
      details: 'ADD fails with code 11 for pods outside exclude_namespaces until the agent is back',
      cause: err,
    });
  }
  if (err instanceof AgentReplyError || err instanceof AgentProtocolError) return replyToCniError(err);
  return err;
}
