// Picks the workload source the config names: a folder of files (the embedded default) or the Kubernetes API.
// Kubernetes credentials come from the kubeconfig setting, or from the in-cluster service account when it is empty.
// Each source's module is loaded only when it is the one chosen (the kubernetes one brings the kubernetes client).
import type { AgentConfig } from '../config.js';
import type { Logger } from '../log.js';
import type { WorkloadSource } from './source.js';

export async function createWorkloadSource(cfg: Pick<AgentConfig, 'workloadSource' | 'workloadsDir' | 'kubeconfig' | 'nodeName'>, log: Logger, env: NodeJS.ProcessEnv = process.env): Promise<WorkloadSource> {
  if (cfg.workloadSource === 'files') {
    const { FilesWorkloadSource } = await import('./files-source.js');
    return new FilesWorkloadSource(cfg.workloadsDir, log);
  }
  const [{ KubeClient }, { KubernetesWorkloadSource }] = await Promise.all([import('./kube/client.js'), import('./kube-source.js')]);
  const client = new KubeClient(cfg.kubeconfig ? { kubeconfig: cfg.kubeconfig } : { inCluster: { env } });
  return new KubernetesWorkloadSource({ client, nodeName: cfg.nodeName, log });
}
