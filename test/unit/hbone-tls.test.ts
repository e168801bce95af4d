// Unit tests for HBONE's identity checks on certificates and for :authority parsing.
import test from 'ava';
import { checkClientSpiffe, checkServerSpiffe, parseAuthority, peerIdentity, uriSans } from '../../agent/src/hbone/tls.js';

const cert = (san: string | undefined) => ({ subjectaltname: san }) as { subjectaltname: string };

test('URI SANs are read from Node\'s subjectaltname string', (t) => {
  t.deepEqual(uriSans('URI:spiffe://cluster.local/ns/a/sa/b, DNS:x.example'), ['spiffe://cluster.local/ns/a/sa/b']);
  t.deepEqual(uriSans(undefined), []);
  t.is(peerIdentity(cert('URI:spiffe://td/ns/a/sa/b')), 'spiffe://td/ns/a/sa/b');
  t.is(peerIdentity(cert('URI:spiffe://td/ns/a/sa/b, URI:spiffe://td/ns/a/sa/c')), undefined, 'two identities are ambiguous');
});

test('the client accepts only the expected server identity', (t) => {
  t.is(checkServerSpiffe('spiffe://td/ns/a/sa/web', cert('URI:spiffe://td/ns/a/sa/web')), undefined);
  t.regex(checkServerSpiffe('spiffe://td/ns/a/sa/web', cert('URI:spiffe://td/ns/a/sa/evil'))?.message ?? '', /presented identity spiffe:\/\/td\/ns\/a\/sa\/evil/);
  t.truthy(checkServerSpiffe('spiffe://td/ns/a/sa/web', cert(undefined)));
});

test('the server accepts any identity of its own trust domain only', (t) => {
  t.is(checkClientSpiffe('cluster.local', cert('URI:spiffe://cluster.local/ns/a/sa/b')), 'spiffe://cluster.local/ns/a/sa/b');
  t.true(checkClientSpiffe('cluster.local', cert('URI:spiffe://other.domain/ns/a/sa/b')) instanceof Error);
  t.true(checkClientSpiffe('cluster.local', cert('URI:spiffe://cluster.local/not/an/istio/id')) instanceof Error);
  t.true(checkClientSpiffe('cluster.local', cert('DNS:x')) instanceof Error);
});

test(':authority parsing', (t) => {
  t.deepEqual(parseAuthority('10.0.0.1:80'), { host: '10.0.0.1', port: 80 });
  t.deepEqual(parseAuthority('[fd00::1]:443'), { host: 'fd00::1', port: 443 });
  for (const bad of ['10.0.0.1', 'host:80', '10.0.0.1:0', '10.0.0.1:70000', '', undefined]) t.is(parseAuthority(bad), undefined, String(bad));
});
