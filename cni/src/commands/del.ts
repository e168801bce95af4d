// CNI DEL: tell the agent a pod's attachment is gone, best effort. DEL always succeeds once the invocation is readable:
// a failing DEL blocks pod deletion forever, and the agent reconciles removed pods on its own.
import { parseCniArgs } from '../config.js';
import type { CommandContext, CommandResult } from './context.js';
import { podEvent, podRef, staticExclusion } from './pod.js';

export async function cmdDel(ctx: CommandContext): Promise<CommandResult> {
  const { conf, env } = ctx;
  // Lenient parses: a bad plugin key or CNI_ARGS pair is logged and skipped instead of failing the DEL.
  const args = parseCniArgs(env.args, { lenient: true });
  const log = ctx.log.child({ pod: podRef(args, env.containerId), ...(args.podUid ? { podUid: args.podUid } : {}) });
  for (const problem of [...conf.warnings, ...args.warnings]) log.warn({ problem }, 'ignoring invalid input on DEL');

  // The agent never heard of pods ADD did not tell it about.
  const excluded = staticExclusion(conf, args);
  if (excluded) {
    log.debug({ reason: excluded }, 'pod excluded, agent not consulted');
    return undefined;
  }

  log.info({ netns: env.netns }, 'telling agent pod is gone');
  try {
    const verdict = await ctx.agent.sendEvent(podEvent(ctx, 'DEL', args, conf.prevResult?.ips ?? []));
    log.info({ result: verdict.result, reason: verdict.reason }, 'agent verdict');
  } catch (err) {
    log.warn({ err }, 'agent not notified of DEL; succeeding anyway, the agent cleans up when it reconciles');
  }
  return undefined;
}
