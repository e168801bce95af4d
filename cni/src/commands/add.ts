// CNI ADD: tell the agent about a new pod and wait for its verdict, so a pod that should be in the mesh never starts outside it.
// Chained: prints prevResult back unchanged (only cniVersion set); never touches the pod's network itself.
import { AgentProtocolError, AgentReplyError, AgentUnreachableError, replyToCniError } from '../agent-client.js';
import { parseCniArgs, type JsonObject, type NetConf } from '../config.js';
import { CniCode, CniError } from '../errors.js';
import type { CommandContext, CommandResult } from './context.js';
import { podEvent, podRef, staticExclusion } from './pod.js';

export async function cmdAdd(ctx: CommandContext): Promise<CommandResult> {
  const { conf, env } = ctx;
  const args = parseCniArgs(env.args);
  const pod = podRef(args, env.containerId);
  const log = ctx.log.child({ pod, ...(args.podUid ? { podUid: args.podUid } : {}) });
  const result = addResult(conf);

  const excluded = staticExclusion(conf, args);
  if (excluded) {
    log.info({ reason: excluded }, 'pod excluded, agent not consulted');
    return result;
  }

  const ips = conf.prevResult?.ips ?? [];
  log.info({ ips: ips.map((ip) => ip.address), netns: env.netns }, 'asking agent to enroll pod');
  try {
    const verdict = await ctx.agent.sendEvent(podEvent(ctx, 'ADD', args, ips));
    log.info({ result: verdict.result, reason: verdict.reason }, 'agent verdict');
  } catch (err) {
    if (err instanceof AgentUnreachableError) {
      // Fail closed: TryAgainLater makes the runtime retry the sandbox instead of starting the pod un-enrolled.
      throw new CniError(CniCode.TryAgainLater, `${err.message}: refusing to start pod ${pod} outside the mesh`, {
        details:
          `the ambient-node agent (pods ${conf.agentNamespace}/ambient-node-*) must be running on this node ` +
          `before pods outside exclude_namespaces can start; the runtime retries ADD`,
        cause: err,
      });
    }
    if (err instanceof AgentReplyError || err instanceof AgentProtocolError) throw replyToCniError(err);
    throw err;
  }
  return result;
}

/**
 * A chained plugin that changes nothing the Result describes must print a result equal to prevResult.
 * Without a prevResult (first or only plugin) it prints an empty but complete Result of the config's version.
 */
function addResult(conf: NetConf): JsonObject {
  if (conf.prevResult) return { ...conf.prevResult.raw, cniVersion: conf.cniVersion };
  return { cniVersion: conf.cniVersion, interfaces: [], ips: [], routes: [], dns: {} };
}
