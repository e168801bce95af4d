// Unit tests for PeerAuthentication: parsing errors that name the object and field, and Istio's precedence rules.
import test from 'ava';
import {
  effectiveMtlsMode, malformedPeerAuthentication, malformedPeerAuthenticationsFor, parsePeerAuthentication, PolicyParseError, type PeerAuthentication,
} from '../../agent/src/policy/peer-authentication.js';

const pa = (namespace: string, name: string, spec: Record<string, unknown>): PeerAuthentication =>
  parsePeerAuthentication({ apiVersion: 'security.istio.io/v1', kind: 'PeerAuthentication', metadata: { name, namespace }, spec });

const pod = { namespace: 'app', labels: { app: 'productpage' } };

const cases: [string, PeerAuthentication[], number, ReturnType<typeof effectiveMtlsMode>][] = [
  ['nothing at all', [], 9080, 'PERMISSIVE'],
  ['mesh-wide STRICT', [pa('istio-system', 'm', { mtls: { mode: 'STRICT' } })], 9080, 'STRICT'],
  ['namespace PERMISSIVE over mesh STRICT', [pa('istio-system', 'm', { mtls: { mode: 'STRICT' } }), pa('app', 'n', { mtls: { mode: 'PERMISSIVE' } })], 9080, 'PERMISSIVE'],
  ['namespace UNSET inherits mesh STRICT', [pa('istio-system', 'm', { mtls: { mode: 'STRICT' } }), pa('app', 'n', { mtls: { mode: 'UNSET' } })], 9080, 'STRICT'],
  ['workload STRICT over namespace PERMISSIVE', [pa('app', 'n', { mtls: { mode: 'PERMISSIVE' } }), pa('app', 'w', { selector: { matchLabels: { app: 'productpage' } }, mtls: { mode: 'STRICT' } })], 9080, 'STRICT'],
  ['workload selector not matching', [pa('app', 'w', { selector: { matchLabels: { app: 'other' } }, mtls: { mode: 'STRICT' } })], 9080, 'PERMISSIVE'],
  ['other namespace ignored', [pa('legacy', 'n', { mtls: { mode: 'STRICT' } })], 9080, 'PERMISSIVE'],
  ['port-level PERMISSIVE on the port', [pa('app', 'w', { selector: { matchLabels: { app: 'productpage' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { 9080: { mode: 'PERMISSIVE' } } })], 9080, 'PERMISSIVE'],
  ['port-level elsewhere', [pa('app', 'w', { selector: { matchLabels: { app: 'productpage' } }, mtls: { mode: 'STRICT' }, portLevelMtls: { 9090: { mode: 'PERMISSIVE' } } })], 9080, 'STRICT'],
  ['DISABLE is kept as DISABLE', [pa('app', 'n', { mtls: { mode: 'DISABLE' } })], 9080, 'DISABLE'],
];
for (const [name, policies, port, want] of cases) {
  test(`mode: ${name} => ${want}`, (t) => {
    t.is(effectiveMtlsMode(policies, pod, port), want);
  });
}

const bad: [string, Record<string, unknown>, RegExp][] = [
  ['unknown mode', { mtls: { mode: 'STRICTER' } }, /app\/x: spec\.mtls\.mode must be one of/],
  ['port-level without selector', { portLevelMtls: { 80: { mode: 'STRICT' } } }, /portLevelMtls needs a spec\.selector/],
  ['bad port', { selector: { matchLabels: { a: 'b' } }, portLevelMtls: { http: { mode: 'STRICT' } } }, /portLevelMtls key "http" is not a port/],
  ['label not a string', { selector: { matchLabels: { a: 1 } } }, /matchLabels\.a must be a string/],
];
for (const [name, spec, msg] of bad) {
  test(`rejects ${name}, naming the object and field`, (t) => {
    t.throws(() => pa('app', 'x', spec), { instanceOf: PolicyParseError, message: msg });
  });
}

test('a malformed PeerAuthentication placeholder refuses plaintext (STRICT) in its scope, over every other level', (t) => {
  const doc = { metadata: { name: 'x', namespace: 'app' }, spec: { mtls: { mode: 'STRICTER' } } };
  const ph = malformedPeerAuthentication(doc, 'PeerAuthentication app/x: spec.mtls.mode must be one of UNSET, DISABLE, PERMISSIVE, STRICT, got "STRICTER"');
  t.like(ph, { namespace: 'app', name: 'x', mode: 'STRICT', matchLabels: undefined });
  t.regex(ph.malformed ?? '', /^spec\.mtls\.mode must be one of/);
  const permissivePort = pa('app', 'w', { selector: { matchLabels: { app: 'productpage' } }, mtls: { mode: 'DISABLE' }, portLevelMtls: { 9080: { mode: 'PERMISSIVE' } } });
  t.is(effectiveMtlsMode([permissivePort], pod, 9080), 'PERMISSIVE');
  t.is(effectiveMtlsMode([permissivePort, ph], pod, 9080), 'STRICT', 'fail closed, whatever a workload policy says');
  t.deepEqual(malformedPeerAuthenticationsFor([permissivePort, ph], pod).map((p) => p.name), ['x']);
  t.is(effectiveMtlsMode([ph], { namespace: 'legacy', labels: {} }, 9080), 'PERMISSIVE', 'another namespace is out of scope');
  // The selector, when it parses, narrows the scope; the root namespace is mesh-wide.
  const sel = malformedPeerAuthentication({ metadata: { name: 's', namespace: 'app' }, spec: { selector: { matchLabels: { app: 'reviews' } }, mtls: 'x' } }, 'e');
  t.is(effectiveMtlsMode([sel], pod, 9080), 'PERMISSIVE');
  t.is(effectiveMtlsMode([sel], { namespace: 'app', labels: { app: 'reviews' } }, 9080), 'STRICT');
  const mesh = malformedPeerAuthentication({ metadata: { name: 'm', namespace: 'istio-system' }, spec: 'junk' }, 'e');
  t.is(effectiveMtlsMode([pa('legacy', 'n', { mtls: { mode: 'DISABLE' } }), mesh], { namespace: 'legacy', labels: {} }, 80), 'STRICT');
});
