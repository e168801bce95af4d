// Unit tests for the agent's configuration merge (defaults < file < flags) and its validation errors.
import test from 'ava';
import { CONFIG_DEFAULTS, ConfigError, drainWarning, parseAgentConfig } from '../../agent/src/config.js';
import { afterHandover } from '../../agent/src/cli/run-agent.js';

test('defaults apply and the node name falls back to NODE_NAME', (t) => {
  const c = parseAgentConfig({}, {}, { NODE_NAME: 'n7' });
  t.like(c, { ...CONFIG_DEFAULTS, caDir: `${CONFIG_DEFAULTS.stateDir}/ca`, nodeName: 'n7' });
});

test('after a take-over an agent exits by default; with exitAfterHandover false (a DaemonSet) it idles until SIGTERM', (t) => {
  t.true(parseAgentConfig({}, { nodeName: 'n' }).exitAfterHandover);
  t.false(parseAgentConfig({ exitAfterHandover: false }, { nodeName: 'n' }).exitAfterHandover);
  t.false(parseAgentConfig({}, { nodeName: 'n', 'exit-after-handover': 'false' }).exitAfterHandover);
  t.throws(() => parseAgentConfig({ exitAfterHandover: 'later' }, { nodeName: 'n' }), { instanceOf: ConfigError, message: /exitAfterHandover must be true or false/ });
  t.is(afterHandover(true, false), 'exit');
  t.is(afterHandover(false, false), 'idle');
  t.is(afterHandover(false, true), 'exit', 'a SIGTERM during the drain (the pod is being deleted) exits at its end');
});

test('a drain longer than the DaemonSet\'s grace period allows is accepted with a warning when the agent idles after a take-over', (t) => {
  t.is(drainWarning({ drainSeconds: 30, exitAfterHandover: false }), undefined);
  t.is(drainWarning({ drainSeconds: 600, exitAfterHandover: true }), undefined, 'the CLI is not killed by a kubelet');
  t.regex(drainWarning({ drainSeconds: 600, exitAfterHandover: false }) ?? '', /terminationGracePeriodSeconds/);
  t.is(parseAgentConfig({ drainSeconds: 3600 }, { nodeName: 'n' }).drainSeconds, 3600);
  t.throws(() => parseAgentConfig({ drainSeconds: 3601 }, { nodeName: 'n' }), { instanceOf: ConfigError, message: /0 to 3600 \(in a DaemonSet, below its terminationGracePeriodSeconds\)/ });
});

test('flags override the file, in either naming style', (t) => {
  const c = parseAgentConfig({ redirectMode: 'nftables', 'state-dir': '/a' }, { 'state-dir': '/b', nodeName: 'x' });
  t.is(c.redirectMode, 'nftables');
  t.is(c.stateDir, '/b');
});

test('the cluster domain of Service host names defaults to cluster.local and can be set', (t) => {
  t.is(parseAgentConfig({}, { nodeName: 'n' }).clusterDomain, 'cluster.local');
  t.is(parseAgentConfig({ 'cluster-domain': 'corp.example' }, { nodeName: 'n' }).clusterDomain, 'corp.example');
});

test('Service CIDRs are off by default and read from a list or a comma-separated flag', (t) => {
  t.deepEqual(parseAgentConfig({}, { nodeName: 'n' }).serviceCidrs, []);
  t.deepEqual(parseAgentConfig({ serviceCidrs: ['10.96.0.0/12', 'fd00:10:96::/112'] }, { nodeName: 'n' }).serviceCidrs, ['10.96.0.0/12', 'fd00:10:96::/112']);
  t.deepEqual(parseAgentConfig({}, { nodeName: 'n', 'service-cidrs': '10.96.0.0/12, 10.100.0.0/16' }).serviceCidrs, ['10.96.0.0/12', '10.100.0.0/16']);
});

test('admin ports default to 15000/15020/15021 and can be set', (t) => {
  t.like(parseAgentConfig({}, { nodeName: 'n' }), { adminPort: 15000, metricsPort: 15020, readinessPort: 15021 });
  t.like(parseAgentConfig({ 'metrics-port': 9091 }, { nodeName: 'n', adminPort: '9000' }), { adminPort: 9000, metricsPort: 9091, readinessPort: 15021 });
});

test('the access log of completed connections is on by default and can be turned off from a file or a flag', (t) => {
  t.true(parseAgentConfig({}, { nodeName: 'n' }).accessLog);
  t.false(parseAgentConfig({ accessLog: false }, { nodeName: 'n' }).accessLog);
  t.false(parseAgentConfig({ accessLog: true }, { nodeName: 'n', 'access-log': 'false' }).accessLog);
});

test('inbound source preservation is on by default and can be turned off from a file or a flag', (t) => {
  t.true(parseAgentConfig({}, { nodeName: 'n' }).preserveSource);
  t.false(parseAgentConfig({ preserveSource: false }, { nodeName: 'n' }).preserveSource);
  t.false(parseAgentConfig({ preserveSource: true }, { nodeName: 'n', 'preserve-source': 'false' }).preserveSource);
  t.true(parseAgentConfig({ 'preserve-source': 'true' }, { nodeName: 'n' }).preserveSource);
});

test('IPv6 capture is on by default, set from a file or a flag (a bare --capture-ipv6 too), with every backend', (t) => {
  t.true(parseAgentConfig({}, { nodeName: 'n' }).captureIpv6, 'on by default, as Istio\'s ambient.ipv6');
  t.false(parseAgentConfig({ captureIpv6: false }, { nodeName: 'n' }).captureIpv6, 'turned off from a file');
  t.false(parseAgentConfig({}, { nodeName: 'n', 'capture-ipv6': false }).captureIpv6, 'turned off by the flag');
  t.true(parseAgentConfig({ captureIpv6: true }, { nodeName: 'n' }).captureIpv6);
  t.true(parseAgentConfig({}, { nodeName: 'n', 'capture-ipv6': true }).captureIpv6, 'a bare flag (commander gives true)');
  t.false(parseAgentConfig({ captureIpv6: true }, { nodeName: 'n', 'capture-ipv6': 'false' }).captureIpv6);
  t.true(parseAgentConfig({}, { nodeName: 'n', 'capture-ipv6': 'true', 'redirect-mode': 'nftables' }).captureIpv6);
  t.true(parseAgentConfig({ redirectMode: 'ebpf' }, { nodeName: 'n', 'capture-ipv6': true }).captureIpv6, 'ebpf carries IPv6 too');
  t.throws(() => parseAgentConfig({ redirectMode: 'ebpf' }, { nodeName: 'n', 'capture-ipv6': 'yes' }), { instanceOf: ConfigError });
  t.false(parseAgentConfig({ redirectMode: 'ebpf' }, { nodeName: 'n', 'capture-ipv6': 'false' }).captureIpv6, 'off is fine with ebpf');
});

test('the kubernetes source takes a kubeconfig (empty: in-cluster) and a /proc root', (t) => {
  t.like(parseAgentConfig({}, { nodeName: 'n' }), { workloadSource: 'files', kubeconfig: '', procRoot: '/proc' });
  t.like(parseAgentConfig({ workloadSource: 'kubernetes', kubeconfig: '/etc/kc' }, { nodeName: 'n', 'proc-root': '/host/proc' }), { workloadSource: 'kubernetes', kubeconfig: '/etc/kc', procRoot: '/host/proc' });
});

test('the removed data path setting is refused, in the file or as a flag, saying native is the only path', (t) => {
  for (const [file, flags] of [[{ dataPath: 'native' }, {}], [{ 'data-path': 'node' }, {}], [{}, { dataPath: 'node' }]] as const) {
    const err = t.throws(() => parseAgentConfig(file, { nodeName: 'n', ...flags }), { instanceOf: ConfigError });
    t.regex(err?.message ?? '', /dataPath \(--data-path\) was removed: the native HBONE data path .* is the only one/);
  }
});

const bad: [string, Record<string, unknown>, RegExp][] = [
  ['unknown key', { colour: 'red' }, /unknown setting "colour"/],
  ['bad redirect mode', { redirectMode: 'ebpf2' }, /redirectMode must be one of iptables, nftables/],
  ['bad log level', { logLevel: 'loud' }, /logLevel/],
  ['access log not a boolean', { accessLog: 'sometimes' }, /accessLog must be true or false/],
  ['preserve source not a boolean', { preserveSource: 'maybe' }, /preserveSource must be true or false/],
  ['capture IPv6 not a boolean', { captureIpv6: 'yes' }, /captureIpv6 must be true or false/],
  ['unsupported source', { workloadSource: 'etcd' }, /workloadSource must be one of files, kubernetes/],
  ['empty proc root', { procRoot: '' }, /procRoot/],
  ['negative timeout', { podLookupTimeoutMs: -1 }, /podLookupTimeoutMs/],
  ['empty state dir', { stateDir: '' }, /stateDir/],
  ['bad trust domain', { trustDomain: 'Bad Domain' }, /trustDomain/],
  ['bad cluster domain', { clusterDomain: 'cluster..local' }, /clusterDomain must be a DNS name/],
  ['service CIDR without a prefix', { serviceCidrs: '10.96.0.0' }, /serviceCidrs: not a CIDR: "10\.96\.0\.0"/],
  ['service CIDR prefix too long', { serviceCidrs: ['10.96.0.0/33'] }, /serviceCidrs: not a CIDR/],
  ['service CIDRs not strings', { serviceCidrs: [12] }, /serviceCidrs must be a list of CIDRs/],
  ['relative probe SNAT cgroup', { probeSnatCgroup: 'system.slice/kubelet.service' }, /probeSnatCgroup must be an absolute cgroup v2 path/],
  ['probe SNAT cgroup escaping', { probeSnatCgroup: '/a/../b' }, /probeSnatCgroup must be an absolute/],
  ['probe SNAT cgroup quoting', { probeSnatCgroup: '/a" -j ACCEPT' }, /probeSnatCgroup must be an absolute/],
  ['probe SNAT cgroup with nftables', { probeSnatCgroup: '/kubelet', redirectMode: 'nftables' }, /probeSnatCgroup needs redirectMode iptables or ebpf/],
  ['cluster domain with a capital', { clusterDomain: 'Cluster.local' }, /clusterDomain/],
  ['unknown CA', { ca: 'vault' }, /ca must be builtin or istio/],
  ['istio CA without an address', { ca: 'istio' }, /istioCaAddress/],
  ['certificate lifetime too short', { certTtlSeconds: 1 }, /certTtlSeconds/],
  ['admin port zero', { adminPort: 0 }, /adminPort must be an integer port/],
  ['metrics port too large', { metricsPort: 70000 }, /metricsPort must be an integer port/],
  ['readiness port not a number', { readinessPort: 'ready' }, /readinessPort must be an integer port/],
  ['admin ports that collide', { adminPort: 15020 }, /must differ/],
];
for (const [name, raw, msg] of bad) {
  test(`rejects ${name}`, (t) => {
    const err = t.throws(() => parseAgentConfig(raw, { nodeName: 'n' }), { instanceOf: ConfigError });
    t.regex(err.message, msg);
  });
}
