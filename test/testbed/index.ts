// Public surface of the testbed library for e2e tests, the demo and benchmarks (no ava import here:
// the ava helpers live in ./ava.ts so scripts can import this without the ava CLI).
export { Testbed, type NodeRef, type PodSpec, type TestbedOptions } from './testbed.js';
export { TestbedPod, waitForListener } from './pod.js';
export {
  buildConflist, type ConflistOptions, type IpFamily, type TestbedNode, type TestbedNodeInfo, UNDERLAY_PREFIX, underlayIp, podCidr, podGateway,
  UNDERLAY6_PREFIX, POD6_PREFIX, underlayIp6, podCidr6, podGateway6, validateIpFamilies,
} from './node.js';
export {
  AgentProcess,
  AgentNotReadyError,
  type AgentExit,
  type AgentLogRecord,
  type AgentSpec,
  type HttpReply,
  type RedirectMode,
} from './agent-process.js';
export {
  CniRuntime,
  type CallOptions,
  type CniAddOutcome,
  type CniGcOutcome,
  type CniOpOutcome,
  type CniPluginSupport,
  type CniRuntimeOptions,
  type CniStatusOutcome,
  type DelOptions,
  type GcOptions,
} from './cni-runtime.js';
export {
  CniPluginError,
  CniRuntimeError,
  k8sCniArgs,
  type CachedAttachment,
  type CniCommand,
  type CniConfList,
  type CniErrorBody,
  type CniPluginConf,
  type CniPluginFailure,
  type CniResult,
  type GcAttachment,
  type PluginInvocation,
  type RuntimeConf,
} from './cni-types.js';
export { execInNetns, listNetns, netnsPath } from './netns.js';
export { WorkloadsDir, namespaceFileName, podFileName, type Labels, type NamespaceObject, type PodObject } from './workloads.js';
export {
  ClusterIpAllocator,
  endpointSliceFileName,
  endpointSlicesFor,
  serviceFileName,
  serviceHostname,
  serviceObject,
  type ContainerPort,
  type EndpointSliceObject,
  type ServiceEndpointSpec,
  type ServicePortResolved,
  type ServicePortSpec,
  type ServiceSpec,
  type TestbedService,
} from './services.js';
export {
  endpointChainName,
  kubeProxyJumps,
  probability,
  renderKubeProxyRules,
  serviceChainName,
  servicePortName,
} from './kube-proxy.js';
export { DNSMASQ, podResolvConf, renderDnsHosts } from './cluster-dns.js';
export { REPO_ROOT, AGENT_MAIN, AGENT_NODE_FLAGS, CNI_MAIN, CNI_STANDALONE, REFERENCE_CNI_DIR } from './repo.js';
export {
  ECHO_PORT, ECHO_SERVER, PY, agentNodePid, findLog, procFdCount, procRssKb, startConnectLoop, successorOf, type ConnectLoopResult,
} from './takeover.js';
