// Unit tests for the TypeScript side of HBONE's SPIFFE rule and for :authority parsing.
import test from 'ava';
import { parseAuthority, spiffeRuleBroken } from '../../agent/src/hbone/tls.js';

test('the TypeScript side of the SPIFFE rule: a valid ID of the trust domain only', (t) => {
  t.is(spiffeRuleBroken('spiffe://cluster.local/ns/a/sa/b', 'cluster.local'), undefined);
  t.regex(spiffeRuleBroken('spiffe://other.domain/ns/a/sa/b', 'cluster.local') ?? '', /not in trust domain cluster.local/);
  t.truthy(spiffeRuleBroken('spiffe://cluster.local/not/an/istio/id', 'cluster.local'));
  t.truthy(spiffeRuleBroken('https://cluster.local/ns/a/sa/b', 'cluster.local'));
});

test(':authority parsing', (t) => {
  t.deepEqual(parseAuthority('10.0.0.1:80'), { host: '10.0.0.1', port: 80 });
  t.deepEqual(parseAuthority('[fd00::1]:443'), { host: 'fd00::1', port: 443 });
  for (const bad of ['10.0.0.1', 'host:80', '10.0.0.1:0', '10.0.0.1:70000', '', undefined]) t.is(parseAuthority(bad), undefined, String(bad));
});
