// One table of SPIFFE IDs and the verdict of the mesh's rule for a client in trust domain cluster.local: run against
// the TypeScript side (spiffeRuleBroken in agent/src/hbone/tls.ts: parseSpiffeId plus the trust domain) and the relay's
// check (agent/native/hbone-relay/tls.c spiffe_check) by test/unit/hbone-spiffe-rule.test.ts, and sampled end to end
// by test/netns/adversarial-hbone.test.ts.

export const CASES_TRUST_DOMAIN = 'cluster.local';

/** [uri, accepted from a client of cluster.local, why]. */
export const SPIFFE_CASES: ReadonlyArray<readonly [string, boolean, string]> = [
  ['spiffe://cluster.local/ns/app/sa/default', true, 'the canonical shape'],
  ['spiffe://cluster.local/ns/a/sa/b', true, 'one-character segments'],
  ['spiffe://cluster.local/ns/My_App-1.x/sa/SA.name-2', true, 'segments allow letters of both cases, digits, . - _'],
  ['spiffe://cluster.local/ns/.../sa/b', true, '"..." is not a dot segment'],
  ['spiffe://cluster.local/whatever', false, 'the issue\'s case: not ns/sa'],
  ['spiffe://cluster.local', false, 'no path'],
  ['spiffe://cluster.local/', false, 'empty path'],
  ['spiffe://cluster.local/ns/app', false, 'no sa'],
  ['spiffe://cluster.local/ns/app/sa', false, 'sa without a name'],
  ['spiffe://cluster.local/ns/app/sa/', false, 'empty service account'],
  ['spiffe://cluster.local/ns//sa/b', false, 'empty namespace'],
  ['spiffe://cluster.local/ns/app/sa/b/', false, 'trailing slash: 6 segments'],
  ['spiffe://cluster.local/ns/app/sa/b/extra', false, 'extra segment'],
  ['spiffe://cluster.local/sa/b/ns/app', false, 'ns and sa swapped'],
  ['spiffe://cluster.local/NS/app/sa/b', false, 'keys are lower case'],
  ['spiffe://cluster.local/ns/app/SA/b', false, 'keys are lower case (sa)'],
  ['spiffe://cluster.local/ns/./sa/b', false, 'namespace "."'],
  ['spiffe://cluster.local/ns/app/sa/..', false, 'service account ".."'],
  ['spiffe://cluster.local/ns/a b/sa/c', false, 'space in a segment'],
  ['spiffe://cluster.local/ns/a%2Fb/sa/c', false, 'percent-encoding is not allowed'],
  ['spiffe://cluster.local/ns/app/sa/b?x=1', false, 'query'],
  ['spiffe://cluster.local/ns/app/sa/b#f', false, 'fragment'],
  ['spiffe://Cluster.local/ns/app/sa/b', false, 'trust domain is lower case only'],
  ['spiffe://cluster.local:8080/ns/app/sa/b', false, 'port in the trust domain'],
  ['spiffe://user@cluster.local/ns/app/sa/b', false, 'user info in the trust domain'],
  ['spiffe:///ns/app/sa/b', false, 'missing trust domain'],
  ['spiffe://other.domain/ns/app/sa/b', false, 'another trust domain'],
  ['spiffe://cluster.localx/ns/app/sa/b', false, 'a trust domain that only starts with ours'],
  ['spiffe://cluster/ns/app/sa/b', false, 'a prefix of our trust domain'],
  ['SPIFFE://cluster.local/ns/app/sa/b', false, 'scheme is lower case'],
  ['https://cluster.local/ns/app/sa/b', false, 'another scheme'],
  [`spiffe://cluster.local/ns/app/sa/${'a'.repeat(2048)}`, false, 'longer than 2048 bytes'],
  [`spiffe://cluster.local/ns/app/sa/${'a'.repeat(2048 - 'spiffe://cluster.local/ns/app/sa/'.length)}`, true, 'exactly 2048 bytes'],
  [`spiffe://${'a'.repeat(256)}/ns/app/sa/b`, false, 'trust domain longer than 255 characters'],
];
