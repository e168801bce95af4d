// Which pod an ADD/DEL/CHECK is about: its Kubernetes identity, whether it is statically excluded from the mesh,
// and the CniEvent that describes the attachment to the agent. Decides nothing the agent decides (pod selection).
import type { CniEvent, PodIp } from '../../../agent/src/protocol/cni-event.js';
import { AGENT_POD_PREFIX, type CniArgs, type NetConf } from '../config.js';
import type { CommandContext } from './context.js';

/**
 * Why the plugin must not involve the agent for this pod, or undefined when it must.
 * These are static facts from the config and CNI_ARGS only; label-based selection is the agent's job.
 */
export function staticExclusion(conf: NetConf, args: CniArgs): string | undefined {
  const { podName, podNamespace } = args;
  if (!podName || !podNamespace) return 'not a Kubernetes pod (no K8S_POD_NAME/K8S_POD_NAMESPACE in CNI_ARGS)';
  if (conf.excludeNamespaces.includes(podNamespace)) return `namespace ${podNamespace} is in exclude_namespaces`;
  // The agent cannot wait for itself: its own pods must start while it is down.
  if (podNamespace === conf.agentNamespace && podName.startsWith(AGENT_POD_PREFIX)) return "the agent's own pod";
  return undefined;
}

/** "namespace/name", or the container id when CNI_ARGS carries no pod identity. */
export function podRef(args: CniArgs, containerId: string): string {
  return args.podName && args.podNamespace ? `${args.podNamespace}/${args.podName}` : `container ${containerId}`;
}

/** The event for the agent; pluginLog holds every record logged so far in this invocation. */
export function podEvent(ctx: CommandContext, command: CniEvent['command'], args: CniArgs, ips: PodIp[]): CniEvent {
  const k8s: CniEvent['k8s'] = {};
  if (args.podName) k8s.podName = args.podName;
  if (args.podNamespace) k8s.podNamespace = args.podNamespace;
  if (args.podUid) k8s.podUid = args.podUid;
  if (args.podInfraContainerId) k8s.podInfraContainerId = args.podInfraContainerId;
  return {
    command,
    cniVersion: ctx.conf.cniVersion,
    containerId: ctx.env.containerId,
    netns: ctx.env.netns,
    ifname: ctx.env.ifname,
    args: args.raw,
    k8s,
    ips,
    network: ctx.conf.name,
    pluginLog: ctx.logs.records(),
  };
}
