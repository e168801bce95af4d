// Picks the workload source the config names: a folder of files (the embedded default) or the Kubernetes API.
// Kubernetes credentials come from the kubeconfig setting, or from the in-cluster service account when it is empty.
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import { FilesWorkloadSource } from './files-source.js';
import { KubeClient } from './kube/client.js';
import { KubernetesWorkloadSource } from './kube-source.js';
import type { WorkloadSource } from './source.js';

export function createWorkloadSource(cfg: Pick<AgentConfig, 'workloadSource' | 'workloadsDir' | 'kubeconfig' | 'nodeName'>, log: Logger, env: NodeJS.ProcessEnv = process.env): WorkloadSource {
  if (cfg.workloadSource === 'files') return new FilesWorkloadSource(cfg.workloadsDir, log);
  const client = new KubeClient(cfg.kubeconfig ? { kubeconfig: cfg.kubeconfig } : { inCluster: { env } });
  return new KubernetesWorkloadSource({ client, nodeName: cfg.nodeName, log });
}
