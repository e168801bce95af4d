// Istio ambient's rules for which pods join the mesh, as one pure function.
// Pod label istio.io/dataplane-mode=ambient, or the namespace's label unless the pod says none; never hostNetwork pods.
import { DATAPLANE_MODE_LABEL, type NamespaceInfo, type PodInfo } from './types.js';

export interface EnrolmentDecision {
  enrol: boolean;
  reason: string;
}

export function decideEnrolment(pod: PodInfo, ns: NamespaceInfo | undefined): EnrolmentDecision {
  if (pod.hostNetwork) return { enrol: false, reason: 'pod uses the host network' };
  const podMode = pod.labels[DATAPLANE_MODE_LABEL];
  if (podMode === 'none') return { enrol: false, reason: `pod is labelled ${DATAPLANE_MODE_LABEL}=none` };
  if (podMode === 'ambient') return { enrol: true, reason: `pod is labelled ${DATAPLANE_MODE_LABEL}=ambient` };
  if (ns?.labels[DATAPLANE_MODE_LABEL] === 'ambient') {
    return { enrol: true, reason: `namespace ${ns.name} is labelled ${DATAPLANE_MODE_LABEL}=ambient` };
  }
  return { enrol: false, reason: 'neither the pod nor its namespace selects ambient mode' };
}
