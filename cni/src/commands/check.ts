// CNI CHECK: ask the agent whether a pod that should be in the mesh still is (rules, listeners, identity).
// Prints nothing on success; the runtime may treat a failure as permanent, so "agent unreachable" is TryAgainLater.
import { AgentProtocolError, AgentReplyError, AgentUnreachableError, replyToCniError } from '../agent-client.js';
import { parseCniArgs } from '../config.js';
import { CniCode, CniError } from '../errors.js';
import type { CommandContext, CommandResult } from './context.js';
import { podEvent, podRef, staticExclusion } from './pod.js';

export async function cmdCheck(ctx: CommandContext): Promise<CommandResult> {
  const { conf, env } = ctx;
  const args = parseCniArgs(env.args);
  const pod = podRef(args, env.containerId);
  const log = ctx.log.child({ pod, ...(args.podUid ? { podUid: args.podUid } : {}) });

  // The spec requires the runtime to send the result of the preceding ADD on CHECK.
  if (!conf.prevResult) {
    throw new CniError(CniCode.InvalidNetworkConfig, 'CHECK requires prevResult (the result of the preceding ADD)');
  }
  const excluded = staticExclusion(conf, args);
  if (excluded) {
    log.debug({ reason: excluded }, 'pod excluded, nothing to check');
    return undefined;
  }

  log.debug({ netns: env.netns }, 'asking agent to check pod');
  try {
    const verdict = await ctx.agent.sendEvent(podEvent(ctx, 'CHECK', args, conf.prevResult.ips));
    log.debug({ result: verdict.result, reason: verdict.reason }, 'agent verdict');
  } catch (err) {
    if (err instanceof AgentUnreachableError) {
      throw new CniError(CniCode.TryAgainLater, `${err.message}: cannot check that pod ${pod} is in the mesh`, {
        cause: err,
      });
    }
    if (err instanceof AgentReplyError || err instanceof AgentProtocolError) throw replyToCniError(err);
    throw err;
  }
  return undefined;
}
