// Unit tests for L4 AuthorizationPolicy: every field (positive and negated), wildcards, CIDRs, ztunnel's four-step
// semantics, scopes, dry-run, L7-only fields (ALLOW never matches, DENY drops the field) and parse errors.
import test from 'ava';
import {
  appliesTo, authorize, malformedAuthorizationPolicy, parseAuthorizationPolicy, type AuthorizationPolicy, type Connection,
} from '../../agent/src/policy/authorization.js';
import { malformedPolicies } from '../../agent/src/policy/malformed.js';
import { PolicyParseError } from '../../agent/src/policy/peer-authentication.js';

type Obj = Record<string, unknown>;
const ap = (spec: Obj, o: { ns?: string; name?: string; dryRun?: string } = {}): AuthorizationPolicy =>
  parseAuthorizationPolicy({
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
    metadata: { name: o.name ?? 'p', namespace: o.ns ?? 'default', ...(o.dryRun ? { annotations: { 'istio.io/dry-run': o.dryRun } } : {}) },
    spec,
  });

const SLEEP = 'spiffe://cluster.local/ns/default/sa/sleep';
const NOTSLEEP = 'spiffe://cluster.local/ns/default/sa/notsleep';
const OTHER = 'spiffe://cluster.local/ns/other/sa/client';
type Src = Connection['source'];
type Dst = Partial<Connection['destination']>;
const conn = (src: Partial<Src> = {}, dst: Dst = {}): Connection => ({
  destination: { namespace: 'default', labels: { app: 'productpage' }, ip: '10.0.0.20', port: 9080, ...dst },
  source: { ip: '10.0.0.10', principal: SLEEP, ...src },
});
const PLAIN: Partial<Src> = { principal: undefined };
const from = (source: Obj): Obj[] => [{ from: [{ source }] }];
const to = (operation: Obj): Obj[] => [{ to: [{ operation }] }];
const when = (...w: Obj[]): Obj[] => [{ when: w }];
const show = (c: Partial<Src> & Dst): string => JSON.stringify(c).replace(/spiffe:\/\/cluster\.local\//g, '');

// [rules, connection overrides (source fields; port/ip for the destination as dstPort/dstIp), matches?]
type Case = [Obj[], Partial<Src> & { dstPort?: number; dstIp?: string }, boolean];
const cases: Case[] = [
  // principals: exact, presence, prefix, suffix; an inner `*` is literal (Istio: exact match)
  [from({ principals: ['cluster.local/ns/default/sa/sleep'] }), {}, true],
  [from({ principals: ['cluster.local/ns/default/sa/sleep'] }), { principal: NOTSLEEP }, false],
  [from({ principals: ['cluster.local/ns/default/sa/sleep'] }), PLAIN, false],
  [from({ principals: ['*'] }), {}, true],
  [from({ principals: ['*'] }), PLAIN, false],
  [from({ principals: ['cluster.local/ns/default/*'] }), {}, true],
  [from({ principals: ['cluster.local/ns/default/*'] }), { principal: OTHER }, false],
  [from({ principals: ['*/sa/sleep'] }), {}, true],
  [from({ principals: ['*/sa/sleep'] }), { principal: NOTSLEEP }, false],
  [from({ principals: ['cluster.local/ns/*/sa/sleep'] }), {}, false],
  [from({ principals: ['cluster.local/ns/other/sa/client', 'cluster.local/ns/default/sa/sleep'] }), {}, true],
  [from({ notPrincipals: ['cluster.local/ns/default/sa/sleep'] }), {}, false],
  [from({ notPrincipals: ['cluster.local/ns/default/sa/sleep'] }), { principal: NOTSLEEP }, true],
  [from({ notPrincipals: ['cluster.local/ns/default/sa/sleep'] }), PLAIN, true],
  [from({ notPrincipals: ['*'] }), PLAIN, true],
  [from({ notPrincipals: ['*'] }), {}, false],
  [from({ notPrincipals: ['*/sa/sleep'] }), {}, false],
  // namespaces come from the identity; plaintext has none (a supplied namespace is ignored)
  [from({ namespaces: ['default'] }), {}, true],
  [from({ namespaces: ['default'] }), { principal: OTHER }, false],
  [from({ namespaces: ['default'] }), PLAIN, false],
  [from({ namespaces: ['default'] }), { principal: undefined, namespace: 'default' }, false],
  [from({ namespaces: ['default'] }), { principal: 'spiffe://example.org/custom', namespace: 'default' }, true],
  [from({ namespaces: ['def*'] }), {}, true],
  [from({ namespaces: ['*ult'] }), {}, true],
  [from({ namespaces: ['*ult'] }), { principal: OTHER }, false],
  [from({ namespaces: ['*'] }), {}, true],
  [from({ namespaces: ['*'] }), PLAIN, false],
  [from({ notNamespaces: ['default'] }), {}, false],
  [from({ notNamespaces: ['default'] }), { principal: OTHER }, true],
  [from({ notNamespaces: ['default'] }), PLAIN, true],
  [from({ notNamespaces: ['oth*'] }), { principal: OTHER }, false],
  // serviceAccounts (`ns/sa`, or bare `sa` in the policy's namespace)
  [from({ serviceAccounts: ['default/sleep'] }), {}, true],
  [from({ serviceAccounts: ['default/sleep'] }), { principal: NOTSLEEP }, false],
  [from({ serviceAccounts: ['sleep'] }), {}, true],
  [from({ serviceAccounts: ['default/sleep'] }), PLAIN, false],
  [from({ notServiceAccounts: ['default/sleep'] }), {}, false],
  [from({ notServiceAccounts: ['default/sleep'] }), PLAIN, true],
  // ipBlocks: IPv4/IPv6 CIDRs and single addresses, IPv4-mapped sources, no cross-family matches
  [from({ ipBlocks: ['10.0.0.0/24'] }), {}, true],
  [from({ ipBlocks: ['10.0.0.0/24'] }), { ip: '10.0.1.10' }, false],
  [from({ ipBlocks: ['10.0.0.10'] }), {}, true],
  [from({ ipBlocks: ['10.0.0.11'] }), {}, false],
  [from({ ipBlocks: ['10.0.0.10/32'] }), {}, true],
  [from({ ipBlocks: ['10.0.0.99/24'] }), {}, true],
  [from({ ipBlocks: ['0.0.0.0/0'] }), {}, true],
  [from({ ipBlocks: ['10.0.0.0/24'] }), { ip: '::ffff:10.0.0.10' }, true],
  [from({ ipBlocks: ['fd00::/64'] }), { ip: 'fd00::1' }, true],
  [from({ ipBlocks: ['fd00::/64'] }), { ip: 'fd00:0:0:1::1' }, false],
  [from({ ipBlocks: ['fd00::1'] }), { ip: 'fd00:0:0::1' }, true],
  [from({ ipBlocks: ['fd00::1'] }), { ip: 'fd00::2' }, false],
  [from({ ipBlocks: ['2001:db8::/32'] }), { ip: '2001:db8:ffff:1:2:3:4:5' }, true],
  [from({ ipBlocks: ['::/0'] }), {}, false],
  [from({ ipBlocks: ['0.0.0.0/0'] }), { ip: 'fd00::1' }, false],
  [from({ ipBlocks: ['192.168.0.0/16', '10.0.0.0/8'] }), {}, true],
  [from({ notIpBlocks: ['10.0.0.0/24'] }), {}, false],
  [from({ notIpBlocks: ['192.168.0.0/16'] }), {}, true],
  [from({ notIpBlocks: ['fd00::/8'] }), { ip: 'fd00::1' }, false],
  // IPv4-mapped CIDRs, as ztunnel: a network keeps the family it is written in and families never mix; peers are
  // canonical (an IPv4-mapped peer is its IPv4 address), so `::ffff:a.b.c.d/n` matches no IPv4 peer, mapped or not,
  // and an IPv4 network matches a mapped peer; IPv4 rules never match IPv6 peers, IPv6 rules never IPv4 ones
  [from({ ipBlocks: ['::ffff:10.0.0.0/120'] }), {}, false],
  [from({ ipBlocks: ['::ffff:10.0.0.0/120'] }), { ip: '::ffff:10.0.0.10' }, false],
  [from({ ipBlocks: ['::ffff:10.0.0.10'] }), {}, false],
  [from({ notIpBlocks: ['::ffff:10.0.0.0/120'] }), {}, true],
  [from({ ipBlocks: ['::ffff:0.0.0.0/96'] }), {}, false],
  [from({ ipBlocks: ['::ffff:0.0.0.0/96'] }), { ip: 'fd00::1' }, false],
  [from({ ipBlocks: ['::ffff:0.0.0.0/64'] }), {}, false],
  [from({ ipBlocks: ['::ffff:0.0.0.0/64'] }), { ip: '::1:2' }, true],
  [from({ ipBlocks: ['::/0'] }), { ip: '::ffff:10.0.0.10' }, false],
  [from({ ipBlocks: ['::a00:a/128'] }), {}, false],
  [from({ ipBlocks: ['FD00:0:0::/48'] }), { ip: 'fd00::abcd' }, true],
  [from({ notIpBlocks: ['fd00::/8'] }), {}, true],
  [from({ notIpBlocks: ['10.0.0.0/8'] }), { ip: 'fd00::1' }, true],
  [when({ key: 'destination.ip', values: ['fd00:10:244:1::/64'] }), { dstIp: 'fd00:10:244:1::5' }, true],
  [when({ key: 'destination.ip', values: ['fd00:10:244:1::/64'] }), {}, false],
  [when({ key: 'destination.ip', values: ['10.0.0.0/8'] }), { dstIp: 'fd00:10:244:1::5' }, false],
  [when({ key: 'destination.ip', notValues: ['fd00:10:244:1::5'] }), { dstIp: 'fd00:10:244:1:0:0:0:5' }, false],
  [when({ key: 'source.ip', values: ['fd00::/16'] }), {}, false],
  // to.operation ports
  [to({ ports: ['9080'] }), {}, true],
  [to({ ports: [9080] }), {}, true],
  [to({ ports: ['8080'] }), {}, false],
  [to({ ports: ['8080', '9080'] }), {}, true],
  [to({ notPorts: ['9080'] }), {}, false],
  [to({ notPorts: ['8080'] }), {}, true],
  [to({ ports: ['9080'], notPorts: ['9080'] }), {}, false],
  // when: each L4 key, values and notValues
  [when({ key: 'source.ip', values: ['10.0.0.0/24'] }), {}, true],
  [when({ key: 'source.ip', values: ['10.0.0.0/24'] }), { ip: '10.9.0.1' }, false],
  [when({ key: 'source.ip', notValues: ['10.0.0.10'] }), {}, false],
  [when({ key: 'source.ip', values: ['fd00::/16'] }), { ip: 'fd00::9' }, true],
  [when({ key: 'source.namespace', values: ['default'] }), {}, true],
  [when({ key: 'source.namespace', values: ['other'] }), {}, false],
  [when({ key: 'source.namespace', values: ['de*'] }), {}, true],
  [when({ key: 'source.namespace', notValues: ['other'] }), {}, true],
  [when({ key: 'source.namespace', values: ['*'], notValues: ['kube-system'] }), {}, true],
  [when({ key: 'source.namespace', values: ['*'], notValues: ['default'] }), {}, false],
  [when({ key: 'source.principal', values: ['cluster.local/ns/default/sa/sleep'] }), {}, true],
  [when({ key: 'source.principal', values: ['cluster.local/ns/default/sa/sleep'] }), { principal: NOTSLEEP }, false],
  [when({ key: 'source.principal', notValues: ['*'] }), PLAIN, true],
  [when({ key: 'source.principal', notValues: ['*'] }), {}, false],
  [when({ key: 'destination.ip', values: ['10.0.0.20'] }), {}, true],
  [when({ key: 'destination.ip', values: ['10.0.0.21'] }), {}, false],
  [when({ key: 'destination.ip', notValues: ['10.0.0.0/24'] }), {}, false],
  [when({ key: 'destination.ip', values: ['fd00::20'] }), { dstIp: 'fd00::20' }, true],
  [when({ key: 'destination.port', values: ['9080'] }), {}, true],
  [when({ key: 'destination.port', values: ['8080'] }), {}, false],
  [when({ key: 'destination.port', notValues: ['9080'] }), {}, false],
  [when({ key: 'destination.port', notValues: ['8080'] }), { dstPort: 9090 }, true],
  // combinations: OR across rules and within from/to, AND across fields, from/to/when and conditions
  [[{ from: [{ source: { principals: ['cluster.local/ns/x/sa/y'] } }, { source: { namespaces: ['default'] } }] }], {}, true],
  [from({ principals: ['cluster.local/ns/default/sa/sleep'], namespaces: ['other'] }), {}, false],
  [from({ principals: ['cluster.local/ns/default/sa/sleep'], ipBlocks: ['10.0.0.0/24'], notIpBlocks: ['10.0.0.10'] }), {}, false],
  [[{ from: [{ source: { principals: ['*'] } }], to: [{ operation: { ports: ['8080'] } }] }], {}, false],
  [[{ from: [{ source: { principals: ['*'] } }], to: [{ operation: { ports: ['9080'] } }] }], {}, true],
  [[{ from: [{ source: { principals: ['*'] } }], when: [{ key: 'destination.port', values: ['8080'] }] }], {}, false],
  [[{ to: [{ operation: { ports: ['8080'] } }, { operation: { ports: ['9080'] } }] }], {}, true],
  [when({ key: 'source.namespace', values: ['default'] }, { key: 'destination.port', values: ['8080'] }), {}, false],
  [when({ key: 'source.namespace', values: ['default'] }, { key: 'destination.port', values: ['9080'] }), {}, true],
  [[...from({ principals: ['cluster.local/ns/x/sa/y'] }), ...to({ ports: ['9080'] })], {}, true],
  [[...from({ principals: ['cluster.local/ns/x/sa/y'] }), ...to({ ports: ['8080'] })], {}, false],
  // an empty rule matches everything; no rules match nothing
  [[{}], PLAIN, true],
  [[], {}, false],
];

const mk = (c: Case[1]): Connection => {
  const { dstPort, dstIp, ...src } = c;
  return conn(src, { ...(dstPort ? { port: dstPort } : {}), ...(dstIp ? { ip: dstIp } : {}) });
};
for (const [rules, c, matches] of cases) {
  test(`rules ${JSON.stringify(rules)} vs ${show(c)}: ALLOW ${matches ? 'allows' : 'denies'}, DENY ${matches ? 'denies' : 'allows'}`, (t) => {
    const allow = authorize([ap({ rules })], mk(c));
    t.is(allow.allowed, matches, allow.reason);
    t.is(allow.policy, matches ? 'default/p' : undefined);
    const deny = authorize([ap({ action: 'DENY', rules })], mk(c));
    t.is(deny.allowed, !matches, deny.reason);
    t.is(deny.policy, matches ? 'default/p' : undefined);
  });
}

test('rules absent: ALLOW matches nothing (deny all), DENY matches nothing (allow all)', (t) => {
  t.false(authorize([ap({})], conn()).allowed);
  t.false(authorize([ap({ rules: null })], conn()).allowed);
  t.true(authorize([ap({ action: 'DENY' })], conn()).allowed);
  t.false(authorize([ap({ action: 'DENY', rules: [{}] })], conn()).allowed);
});

// L7-only fields: in ALLOW the rule never matches; in DENY the field is dropped and the rest of the rule applies.
const L7: [string, Obj[]][] = [
  ...['requestPrincipals', 'notRequestPrincipals', 'remoteIpBlocks', 'notRemoteIpBlocks'].map((f): [string, Obj[]] =>
    [`from[0].source.${f}`, [{ from: [{ source: { principals: ['*/sa/sleep'], [f]: f.includes('Ip') ? ['1.2.3.4'] : ['*'] } }] }]]),
  ...['hosts', 'notHosts', 'methods', 'notMethods', 'paths', 'notPaths'].map((f): [string, Obj[]] =>
    [`to[0].operation.${f}`, [{ from: [{ source: { principals: ['*/sa/sleep'] } }], to: [{ operation: { [f]: ['x'] } }] }]]),
  ...['request.headers[x-user]', 'request.auth.claims[iss]', 'remote.ip', 'connection.sni', 'request.auth.principal'].map((k): [string, Obj[]] =>
    [`when[0] key ${k}`, [{ from: [{ source: { principals: ['*/sa/sleep'] } }], when: [{ key: k, values: ['v'] }] }]]),
];
for (const [field, rules] of L7) {
  test(`L7-only ${field}: ALLOW rule never matches, DENY drops the field, both warn`, (t) => {
    const allow = ap({ rules });
    t.false(authorize([allow], conn()).allowed);
    t.is(allow.warnings.length, 1);
    t.true(allow.warnings[0]?.startsWith(`AuthorizationPolicy default/p: spec.rules[0].${field}`), allow.warnings[0]);
    t.regex(allow.warnings[0] ?? '', /never matches/);
    const deny = ap({ action: 'DENY', rules });
    t.false(authorize([deny], conn()).allowed, 'sleep is denied: the L4 part matches');
    t.true(authorize([deny], conn({ principal: NOTSLEEP })).allowed, 'notsleep passes: the L4 part still applies');
    t.regex(deny.warnings[0] ?? '', /ignored/);
  });
}

test('L7: an ALLOW policy still allows through its other, L4-only rules', (t) => {
  const p = ap({ rules: [...to({ methods: ['GET'] }), ...from({ principals: ['cluster.local/ns/default/sa/sleep'] })] });
  t.like(authorize([p], conn()), { allowed: true, policy: 'default/p' });
  t.false(authorize([p], conn({ principal: NOTSLEEP })).allowed);
});

test('L7: a DENY whose entry had only L7 fields matches every source / port', (t) => {
  t.false(authorize([ap({ action: 'DENY', rules: from({ requestPrincipals: ['*'] }) })], conn(PLAIN)).allowed);
  const p = ap({ action: 'DENY', rules: to({ methods: ['POST'], ports: ['9080'] }) });
  t.false(authorize([p], conn()).allowed);
  t.true(authorize([p], conn({}, { port: 8080 })).allowed);
  t.false(authorize([ap({ action: 'DENY', rules: when({ key: 'request.headers[x]', values: ['1'] }) })], conn()).allowed);
});

// ztunnel's four steps and scopes.
const allowSleep = (o: { ns?: string; name?: string; dryRun?: string; selector?: Obj } = {}): AuthorizationPolicy =>
  ap({ ...(o.selector ? { selector: { matchLabels: o.selector } } : {}), rules: from({ principals: ['cluster.local/ns/default/sa/sleep'] }) }, o);
const denyAll = (o: { ns?: string; name?: string; dryRun?: string } = {}): AuthorizationPolicy => ap({ action: 'DENY', rules: [{}] }, o);

type Sem = [string, AuthorizationPolicy[], Partial<Src>, Dst, boolean, string | undefined];
const semantics: Sem[] = [
  ['no policies at all', [], {}, {}, true, undefined],
  ['a DENY that does not match, no ALLOW', [ap({ action: 'DENY', rules: from({ namespaces: ['other'] }) })], {}, {}, true, undefined],
  ['a matching DENY beats a matching ALLOW', [allowSleep({ name: 'a' }), denyAll({ name: 'd' })], {}, {}, false, 'default/d'],
  ['ALLOW matches', [allowSleep({ name: 'a' })], {}, {}, true, 'default/a'],
  ['ALLOW applies but does not match', [allowSleep({ name: 'a' })], { principal: NOTSLEEP }, {}, false, undefined],
  ['any of several ALLOW policies', [allowSleep({ name: 'a' }), ap({ rules: from({ principals: ['*/sa/notsleep'] }) }, { name: 'b' })], { principal: NOTSLEEP }, {}, true, 'default/b'],
  ['root-namespace DENY applies everywhere', [denyAll({ ns: 'istio-system', name: 'root' })], {}, { namespace: 'bookinfo' }, false, 'istio-system/root'],
  ['root-namespace ALLOW makes the default deny everywhere', [allowSleep({ ns: 'istio-system', name: 'root' })], { principal: OTHER }, { namespace: 'bookinfo' }, false, undefined],
  ['root-namespace selector policy applies in any namespace', [denyAll({ ns: 'istio-system', name: 'r' })].map((p) => ({ ...p, matchLabels: { app: 'productpage' } })), {}, { namespace: 'bookinfo' }, false, 'istio-system/r'],
  ['root-namespace selector policy, labels differ', [denyAll({ ns: 'istio-system', name: 'r' })].map((p) => ({ ...p, matchLabels: { app: 'reviews' } })), {}, { namespace: 'bookinfo' }, true, undefined],
  ['another namespace\'s policy does not apply', [denyAll({ ns: 'other' })], {}, {}, true, undefined],
  ['namespace policy applies to every workload in it', [denyAll({ name: 'ns-wide' })], {}, { labels: { app: 'reviews' } }, false, 'default/ns-wide'],
  ['selector matches the pod labels', [allowSleep({ name: 's', selector: { app: 'productpage' } })], { principal: NOTSLEEP }, {}, false, undefined],
  ['selector does not match: the ALLOW does not apply', [allowSleep({ name: 's', selector: { app: 'productpage' } })], { principal: NOTSLEEP }, { labels: { app: 'reviews' } }, true, undefined],
  ['selector needs every label', [allowSleep({ name: 's', selector: { app: 'productpage', version: 'v2' } })], { principal: NOTSLEEP }, { labels: { app: 'productpage', version: 'v1' } }, true, undefined],
  ['a custom root namespace', [denyAll({ ns: 'mesh-root', name: 'r' })], {}, { namespace: 'bookinfo' }, false, 'mesh-root/r'],
];
for (const [name, policies, src, dst, allowed, policy] of semantics) {
  test(`semantics: ${name} => ${allowed ? 'allow' : 'deny'}${policy ? ` by ${policy}` : ''}`, (t) => {
    const d = authorize(policies, conn(src, dst), name.includes('custom root') ? 'mesh-root' : undefined);
    t.is(d.allowed, allowed, d.reason);
    t.is(d.policy, policy);
    t.deepEqual(d.dryRun, []);
  });
}

test('reasons say what decided', (t) => {
  t.is(authorize([], conn()).reason, 'allowed: no ALLOW policy applies');
  t.is(authorize([denyAll({ name: 'd' })], conn()).reason, 'denied by DENY policy default/d');
  t.is(authorize([allowSleep({ name: 'a' })], conn()).reason, 'allowed by ALLOW policy default/a');
  t.regex(authorize([allowSleep({ name: 'a' })], conn(PLAIN)).reason, /no rule of the applicable ALLOW policies matched \(default\/a\)/);
});

test('dry-run policies are reported but never change the decision', (t) => {
  const d1 = authorize([denyAll({ name: 'dd', dryRun: 'true' })], conn());
  t.like(d1, { allowed: true, policy: undefined, dryRunAllowed: false });
  t.deepEqual(d1.dryRun, [{ policy: 'default/dd', action: 'DENY', matched: true }]);
  const d2 = authorize([allowSleep({ name: 'da', dryRun: 'true' })], conn({ principal: NOTSLEEP }));
  t.like(d2, { allowed: true, dryRunAllowed: false });
  t.deepEqual(d2.dryRun, [{ policy: 'default/da', action: 'ALLOW', matched: false }]);
  const d3 = authorize([denyAll({ name: 'd' }), allowSleep({ name: 'da', dryRun: 'true' })], conn());
  t.like(d3, { allowed: false, policy: 'default/d', dryRunAllowed: false });
  t.deepEqual(d3.dryRun, [{ policy: 'default/da', action: 'ALLOW', matched: true }]);
  const d4 = authorize([allowSleep({ name: 'a' }), denyAll({ name: 'x', dryRun: 'false' })], conn());
  t.like(d4, { allowed: false, policy: 'default/x' });
  t.is(d4.dryRunAllowed, undefined);
  t.false(authorize([denyAll({ ns: 'other', dryRun: 'true' })], conn()).dryRun.length > 0, 'not applicable: not reported');
});

test('targetRef policies belong to waypoints: parsed with a warning, never applied', (t) => {
  const p = ap({ targetRefs: [{ kind: 'Service', name: 'productpage' }], action: 'DENY', rules: [{}] });
  t.true(p.waypointOnly);
  t.regex(p.warnings[0] ?? '', /spec\.targetRef/);
  t.true(authorize([p], conn()).allowed);
});

test('seed scenario: ALLOW on productpage admits only sleep; a DENY overrides it', (t) => {
  const viewer = parseAuthorizationPolicy({
    apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy',
    metadata: { name: 'productpage-viewer', namespace: 'default' },
    spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/sleep'] } }] }] },
  });
  t.deepEqual(viewer.warnings, []);
  t.like(authorize([viewer], conn()), { allowed: true, policy: 'default/productpage-viewer' });
  t.like(authorize([viewer], conn({ principal: NOTSLEEP })), { allowed: false, policy: undefined });
  t.like(authorize([viewer], conn(PLAIN)), { allowed: false });
  t.like(authorize([viewer], conn({ principal: NOTSLEEP }, { labels: { app: 'reviews' } })), { allowed: true });
  const deny = ap({ selector: { matchLabels: { app: 'productpage' } }, action: 'DENY', rules: [{ from: [{ source: { principals: ['cluster.local/ns/default/sa/sleep'] } }], to: [{ operation: { ports: ['9080'] } }] }] }, { name: 'block-sleep' });
  t.like(authorize([viewer, deny], conn()), { allowed: false, policy: 'default/block-sleep' });
});

test('parsing: defaults, dry-run annotation, selector', (t) => {
  const p = ap({ selector: { matchLabels: { app: 'a' } } }, { dryRun: 'true' });
  t.like(p, { namespace: 'default', name: 'p', action: 'ALLOW', dryRun: true, matchLabels: { app: 'a' }, waypointOnly: false, rules: [] });
  t.like(parseAuthorizationPolicy({ metadata: { name: 'n' } }), { namespace: 'default', action: 'ALLOW', dryRun: false, matchLabels: undefined });
});

const rule0 = (source: Obj): Obj => ({ rules: [{ from: [{ source: { principals: ['*'] } }, { source }] }] });
const bad: [string, Obj, RegExp][] = [
  ['bad CIDR', rule0({ ipBlocks: ['10.0.0.0/8', '::/0', '10.0.0.0/33'] }), /spec\.rules\[0\]\.from\[1\]\.source\.ipBlocks\[2\] is not an IP address or CIDR: "10\.0\.0\.0\/33"/],
  ['bad IPv6 prefix', rule0({ notIpBlocks: ['fd00::/129'] }), /from\[1\]\.source\.notIpBlocks\[0\] is not an IP/],
  ['a hostname as ipBlock', rule0({ ipBlocks: ['example.com'] }), /ipBlocks\[0\] is not an IP/],
  ['CIDR with two slashes', rule0({ ipBlocks: ['10.0.0.0/8/8'] }), /ipBlocks\[0\] is not an IP/],
  ['port 0', { rules: to({ ports: ['0'] }) }, /spec\.rules\[0\]\.to\[0\]\.operation\.ports\[0\] must be a port 1\.\.65535, got "0"/],
  ['port 65536', { rules: to({ notPorts: [80, 65536] }) }, /operation\.notPorts\[1\] must be a port/],
  ['named port', { rules: to({ ports: ['http'] }) }, /operation\.ports\[0\] must be a port/],
  ['unknown action', { action: 'REJECT' }, /spec\.action must be ALLOW or DENY, got "REJECT"/],
  ['CUSTOM action', { action: 'CUSTOM', provider: { name: 'x' } }, /spec\.action CUSTOM is not supported/],
  ['AUDIT action', { action: 'AUDIT' }, /spec\.action AUDIT is not supported/],
  ['provider without CUSTOM', { provider: { name: 'x' } }, /spec\.provider is only valid with action CUSTOM/],
  ['a typo in a source field', rule0({ notPrincipal: ['x'] }), /from\[1\]\.source\.notPrincipal is not a known field/],
  ['a typo in a spec field', { rule: [] }, /spec\.rule is not a known field/],
  ['an empty source', rule0({}), /from\[1\]\.source must be a non-empty mapping/],
  ['an empty from list', { rules: [{ from: [] }] }, /spec\.rules\[0\]\.from must not be empty/],
  ['an empty operation', { rules: [{ to: [{ operation: {} }] }] }, /to\[0\]\.operation must be a non-empty mapping/],
  ['principals not a list', rule0({ principals: 'x' }), /source\.principals must be a list of strings/],
  ['an empty principal', rule0({ principals: [''] }), /source\.principals\[0\] must be a non-empty string/],
  ['a bad service account', rule0({ serviceAccounts: ['a/b/c'] }), /source\.serviceAccounts\[0\] must be "namespace\/serviceaccount"/],
  ['a bad L7 field value', { rules: to({ methods: 'GET' }) }, /operation\.methods must be a list of strings/],
  ['when without values', { rules: when({ key: 'source.ip' }) }, /when\[0\] needs values or notValues for key source\.ip/],
  ['when unknown key', { rules: when({ key: 'source.ipx', values: ['1'] }) }, /when\[0\]\.key is not a known attribute: "source\.ipx"/],
  ['when bad port', { rules: when({ key: 'destination.port', notValues: ['x'] }) }, /when\[0\]\.notValues\[0\] must be a port/],
  ['when bad IP', { rules: when({ key: 'destination.ip', values: ['10.0.0'] }) }, /when\[0\]\.values\[0\] is not an IP/],
  ['rules not a list', { rules: {} }, /spec\.rules must be a list/],
  ['a rule not a mapping', { rules: ['x'] }, /spec\.rules\[0\] must be a mapping/],
  ['a label not a string', { selector: { matchLabels: { app: 1 } } }, /spec\.selector\.matchLabels\.app must be a string/],
];
for (const [name, spec, msg] of bad) {
  test(`rejects ${name}, naming the object and field`, (t) => {
    const err = t.throws(() => ap(spec, { ns: 'bookinfo', name: 'x' }), { instanceOf: PolicyParseError, message: msg });
    t.true(err?.message.startsWith('AuthorizationPolicy bookinfo/x: '), err?.message);
  });
}

test('rejects a bad dry-run annotation and a missing name', (t) => {
  t.throws(() => ap({}, { dryRun: 'yes' }), { instanceOf: PolicyParseError, message: /AuthorizationPolicy default\/p: metadata\.annotations\["istio\.io\/dry-run"\] must be "true" or "false"/ });
  t.throws(() => parseAuthorizationPolicy({ metadata: { namespace: 'a' } }), { instanceOf: PolicyParseError, message: /AuthorizationPolicy a\/\(unnamed\): metadata\.name/ });
});

// Fail closed: a policy that cannot be parsed (and has no previous good version) stands as a placeholder denying
// everything in its scope, as far as that scope can be read.
const TYPO_DOC = {
  apiVersion: 'security.istio.io/v1', kind: 'AuthorizationPolicy', metadata: { name: 'viewer', namespace: 'default' },
  spec: { selector: { matchLabels: { app: 'productpage' } }, action: 'ALLOW', rules: [{ from: [{ source: { principal: ['cluster.local/ns/default/sa/sleep'] } }] }] },
};
const typoError = (): string => {
  try {
    parseAuthorizationPolicy(TYPO_DOC);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('the typo parsed');
};

test('malformed placeholder: the scope as far as it can be read, the error without the object prefix', (t) => {
  const ph = malformedAuthorizationPolicy(TYPO_DOC, typoError());
  t.like(ph, { namespace: 'default', name: 'viewer', action: 'DENY', dryRun: false, waypointOnly: false, matchLabels: { app: 'productpage' } });
  t.regex(ph.malformed ?? '', /^spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field/);
  // A selector that does not parse: the whole namespace. No namespace: default. Not even a mapping: still a placeholder.
  t.is(malformedAuthorizationPolicy({ metadata: { name: 'x', namespace: 'app' }, spec: { selector: { matchLabels: { app: 1 } } } }, 'e').matchLabels, undefined);
  t.is(malformedAuthorizationPolicy({ metadata: { name: 'x', namespace: 'app' }, spec: { selector: 'app=x' } }, 'e').matchLabels, undefined);
  t.like(malformedAuthorizationPolicy({ metadata: { name: 'x' }, spec: [] }, 'e'), { namespace: 'default', name: 'x', matchLabels: undefined });
  t.like(malformedAuthorizationPolicy('junk', 'e'), { namespace: 'default', name: '(unnamed)' });
  t.deepEqual(malformedPolicies([ph, ap({})], []), [{ kind: 'AuthorizationPolicy', policy: 'default/viewer', error: ph.malformed ?? '' }]);
});

test('malformed placeholder denies every connection in its scope, naming the object and the error; out of scope it does nothing', (t) => {
  const ph = malformedAuthorizationPolicy(TYPO_DOC, typoError());
  const d = authorize([ph], conn());
  t.false(d.allowed, 'the only ALLOW policy has a typo: nobody is admitted (not everyone)');
  t.is(d.policy, 'default/viewer');
  t.regex(d.reason, /^denied: policy default\/viewer is malformed \(spec\.rules\[0\]\.from\[0\]\.source\.principal is not a known field.*\); fix it$/);
  t.false(authorize([ph], conn(PLAIN)).allowed, 'plaintext too');
  // Over a good ALLOW that matches, and whatever the port.
  const allowAll = ap({ rules: [{}] }, { name: 'allow-all' });
  t.false(authorize([allowAll, ph], conn({}, { port: 1 })).allowed);
  // Its selector does not match another workload; another namespace is out of scope.
  t.true(authorize([ph], conn({}, { labels: { app: 'reviews' } })).allowed);
  t.true(authorize([ph], conn({}, { namespace: 'other' })).allowed);
  // No readable selector: the whole namespace. The root namespace: mesh-wide.
  const nsWide = malformedAuthorizationPolicy({ metadata: { name: 'x', namespace: 'default' }, spec: { selector: 7 } }, 'spec.selector must be a mapping');
  t.false(authorize([nsWide], conn({}, { labels: {} })).allowed);
  const mesh = malformedAuthorizationPolicy({ metadata: { name: 'x', namespace: 'istio-system' }, spec: { rules: {} } }, 'spec.rules must be a list');
  t.true(appliesTo(mesh, { namespace: 'anywhere', labels: {} }));
  t.false(authorize([mesh], conn({}, { namespace: 'anywhere' })).allowed);
  t.regex(authorize([mesh], conn()).reason, /policy istio-system\/x is malformed \(spec\.rules must be a list\)/);
  // What could only make it apply less than any valid version is kept: a dry-run one is reported, not enforced; a
  // waypoint's one (targetRefs) is ignored by ztunnel. An unreadable annotation is no dry-run.
  const dry = malformedAuthorizationPolicy({ ...TYPO_DOC, metadata: { ...TYPO_DOC.metadata, annotations: { 'istio.io/dry-run': 'true' } } }, 'e');
  const dd = authorize([dry], conn());
  t.true(dd.allowed);
  t.like(dd, { dryRunAllowed: false, dryRun: [{ policy: 'default/viewer', action: 'DENY', matched: true }] });
  const notDry = malformedAuthorizationPolicy({ ...TYPO_DOC, metadata: { ...TYPO_DOC.metadata, annotations: { 'istio.io/dry-run': 'yes' } } }, 'e');
  t.false(authorize([notDry], conn()).allowed);
  const waypoint = malformedAuthorizationPolicy({ ...TYPO_DOC, spec: { ...TYPO_DOC.spec, targetRefs: [{ kind: 'Service', name: 'productpage' }] } }, 'e');
  t.true(waypoint.waypointOnly);
  t.true(authorize([waypoint], conn()).allowed);
  t.deepEqual(malformedPolicies([waypoint], []).map((m) => m.policy), ['default/viewer'], 'still counted as malformed');
});

test('an IPv4-mapped ipBlock (::ffff:a.b.c.d/n, n >= 96) is kept as written, warned as matching nothing, with the IPv4 form to use', (t) => {
  const p = ap({ action: 'ALLOW', rules: [{ from: [{ source: { ipBlocks: ['::ffff:10.1.0.0/112', '::ffff:0:0/64'] } }] }] });
  t.is(p.warnings.length, 1, 'only the /96-or-longer one: a shorter prefix covers real IPv6 space');
  t.regex(p.warnings[0] ?? '', /::ffff:10\.1\.0\.0\/112 is an IPv4-mapped IPv6 network: it matches no peer .* write 10\.1\.0\.0\/16 instead/);
  t.like(p.rules[0]?.from[0]?.ipBlocks[0], { family: 6, prefix: 112 });
  t.throws(() => ap({ rules: [{ from: [{ source: { ipBlocks: ['fe80::/64%eth0'] } }] }] }));
  t.throws(() => ap({ rules: [{ from: [{ source: { ipBlocks: ['fe80::1%eth0'] } }] }] }), { message: /is not an IP address or CIDR/ });
});
