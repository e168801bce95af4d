// Unit tests for SPIFFE identity parsing and building: the accepted shape and every rejected one, with the rule named.
// Error messages name the broken rule so operators can fix a bad workload directory entry.
import test from 'ava';
import { InvalidSpiffeIdError } from '../../agent/src/identity/errors.js';
import { checkTrustDomain, isSpiffeId, parseSpiffeId, spiffeId, trustDomainOf } from '../../agent/src/identity/spiffe.js';

test('parses spiffe://<td>/ns/<ns>/sa/<sa>', (t) => {
  t.deepEqual(parseSpiffeId('spiffe://cluster.local/ns/default/sa/web'), {
    trustDomain: 'cluster.local', namespace: 'default', serviceAccount: 'web',
  });
  t.deepEqual(parseSpiffeId('spiffe://td_1-x/ns/a.b/sa/C_d-9'), { trustDomain: 'td_1-x', namespace: 'a.b', serviceAccount: 'C_d-9' });
});

test('spiffeId builds what parseSpiffeId reads back, and trustDomainOf extracts the domain', (t) => {
  const id = spiffeId('example.org', 'shop', 'cart');
  t.is(id, 'spiffe://example.org/ns/shop/sa/cart');
  t.is(trustDomainOf(id), 'example.org');
  t.true(isSpiffeId(id));
  t.throws(() => spiffeId('example.org', 'a/b', 'c'), { instanceOf: InvalidSpiffeIdError });
  t.throws(() => spiffeId('Example.org', 'a', 'c'), { instanceOf: InvalidSpiffeIdError });
});

test('checkTrustDomain accepts SPIFFE trust domain names only', (t) => {
  t.is(checkTrustDomain('cluster.local'), 'cluster.local');
  for (const bad of ['', 'Cluster.local', 'a/b', 'td:1', 'x'.repeat(256)]) {
    t.throws(() => checkTrustDomain(bad), { instanceOf: InvalidSpiffeIdError }, JSON.stringify(bad));
  }
});

const BAD: Array<[string, RegExp]> = [
  ['', /spiffe:\/\//],
  ['http://cluster.local/ns/a/sa/b', /spiffe:\/\//],
  ['SPIFFE://cluster.local/ns/a/sa/b', /spiffe:\/\//],
  ['spiffe://', /missing trust domain/],
  ['spiffe:///ns/a/sa/b', /missing trust domain/],
  ['spiffe://Cluster.local/ns/a/sa/b', /lowercase/],
  ['spiffe://cluster.local:443/ns/a/sa/b', /no port/],
  ['spiffe://user@cluster.local/ns/a/sa/b', /no port or user/],
  ['spiffe://cluster.local', /5 path segments/],
  ['spiffe://cluster.local/ns/a', /5 path segments/],
  ['spiffe://cluster.local/ns/a/sa', /5 path segments/],
  ['spiffe://cluster.local/ns/a/sa/b/', /5 path segments .*, got 6$/],
  ['spiffe://cluster.local/ns/a/sa/b/c', /5 path segments/],
  ['spiffe://cluster.local/ns/a/b/sa/c', /5 path segments/],
  ['spiffe://cluster.local/namespace/a/sa/b', /second segment must be "ns"/],
  ['spiffe://cluster.local/ns/a/serviceaccount/b', /fourth segment must be "sa"/],
  ['spiffe://cluster.local/sa/a/ns/b', /second segment/],
  ['spiffe://cluster.local/ns//sa/b', /empty namespace/],
  ['spiffe://cluster.local/ns/a/sa/', /empty service account/],
  ['spiffe://cluster.local/ns/../sa/b', /namespace may not be "\." or "\.\."/],
  ['spiffe://cluster.local/ns/a/sa/.', /service account may not be/],
  ['spiffe://cluster.local/ns/a b/sa/c', /namespace may hold only/],
  ['spiffe://cluster.local/ns/a/sa/b%20', /service account may hold only/],
  ['spiffe://cluster.local/ns/a/sa/b?x=1', /query and fragment/],
  ['spiffe://cluster.local/ns/a/sa/b#frag', /query and fragment/],
  [`spiffe://${'a'.repeat(256)}/ns/a/sa/b`, /trust domain longer than 255/],
  [`spiffe://cluster.local/ns/a/sa/${'b'.repeat(2100)}`, /longer than 2048 bytes/],
];

for (const [input, reason] of BAD) {
  test(`rejects ${JSON.stringify(input.length > 60 ? `${input.slice(0, 57)}...` : input)}`, (t) => {
    const err = t.throws(() => parseSpiffeId(input), { instanceOf: InvalidSpiffeIdError, message: reason });
    t.is(err?.code, 'AMB_ERR_SPIFFE_ID');
    t.is(err?.input, input);
    t.false(isSpiffeId(input));
  });
}
