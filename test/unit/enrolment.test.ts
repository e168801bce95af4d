// Unit tests for Istio's ambient selection rules (pod label, namespace label, none, hostNetwork).
import test from 'ava';
import { decideEnrolment } from '../../agent/src/workload/enrolment.js';
import type { NamespaceInfo, PodInfo } from '../../agent/src/workload/types.js';

const pod = (labels: Record<string, string>, hostNetwork = false): PodInfo => ({
  namespace: 'app', name: 'p', uid: 'u', labels, annotations: {}, nodeName: 'n1', serviceAccount: 'default', hostNetwork, podIPs: [],
});
const ns = (labels: Record<string, string>): NamespaceInfo => ({ name: 'app', labels });
const L = 'istio.io/dataplane-mode';

const cases: [string, PodInfo, NamespaceInfo | undefined, boolean][] = [
  ['pod ambient, namespace unlabelled', pod({ [L]: 'ambient' }), ns({}), true],
  ['pod ambient, namespace unknown', pod({ [L]: 'ambient' }), undefined, true],
  ['pod unlabelled, namespace ambient', pod({}), ns({ [L]: 'ambient' }), true],
  ['pod none, namespace ambient', pod({ [L]: 'none' }), ns({ [L]: 'ambient' }), false],
  ['pod unlabelled, namespace unlabelled', pod({}), ns({}), false],
  ['pod unlabelled, namespace none', pod({}), ns({ [L]: 'none' }), false],
  ['pod other value, namespace ambient', pod({ [L]: 'sidecar' }), ns({ [L]: 'ambient' }), true],
  ['hostNetwork pod labelled ambient', pod({ [L]: 'ambient' }, true), ns({ [L]: 'ambient' }), false],
];

for (const [name, p, n, want] of cases) {
  test(`${name} => ${want ? 'enrol' : 'skip'}`, (t) => {
    const d = decideEnrolment(p, n);
    t.is(d.enrol, want);
    t.true(d.reason.length > 0);
  });
}
