// ambient-cni invocation checks that come before any command runs: VERSION, version negotiation and gating,
// the CNI_* environment, stdin decoding and size, and validation of the plugin's own configuration keys.
import test from 'ava';
import {
  SPEC_VERSIONS,
  SUPPORTED,
  assertCniError,
  invoke,
  netConf,
  podEnv,
  prevResultFor,
  startFakeAgent,
} from './cni-helpers.js';

const UNSUPPORTED = SPEC_VERSIONS.filter((v) => !(SUPPORTED as readonly string[]).includes(v));

for (const version of SPEC_VERSIONS) {
  test(`VERSION echoes cniVersion ${version} and lists the supported versions`, async (t) => {
    const r = await invoke(t, { CNI_COMMAND: 'VERSION' }, { cniVersion: version });
    t.is(r.code, 0);
    t.deepEqual(r.out, { cniVersion: version, supportedVersions: [...SUPPORTED] });
  });
}

for (const [label, stdin] of [
  ['empty stdin', ''],
  ['stdin that is not JSON', '{nope'],
  ['stdin without cniVersion', '{"name":"x"}'],
] as const) {
  test(`VERSION with ${label} answers with 1.1.0`, async (t) => {
    const r = await invoke(t, { CNI_COMMAND: 'VERSION' }, stdin);
    t.is(r.code, 0);
    t.deepEqual(r.out, { cniVersion: '1.1.0', supportedVersions: [...SUPPORTED] });
  });
}

for (const command of ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC']) {
  for (const version of UNSUPPORTED) {
    test(`${command} with unsupported config version ${version} fails with code 1`, async (t) => {
      const agent = await startFakeAgent(t);
      const r = await invoke(t, podEnv(command), netConf(version, agent.socket));
      assertCniError(t, r, 1, new RegExp(`incompatible CNI version "${version.replace(/\./g, '\\.')}"`));
      t.is(r.out?.cniVersion, version, 'the error echoes the config version');
      t.deepEqual(agent.requests, []);
    });
  }
}

test('a config without cniVersion counts as 0.1.0 and fails with code 1', async (t) => {
  const r = await invoke(t, podEnv('ADD'), { name: 'n', type: 'ambient-cni' });
  assertCniError(t, r, 1, /"0\.1\.0" \(the config has no cniVersion\)/);
  t.is(r.out?.cniVersion, '1.1.0');
});

// Commands newer than some supported versions: CHECK since 0.4.0, STATUS and GC since 1.1.0.
const GATES = [
  ['CHECK', '0.4.0'],
  ['STATUS', '1.1.0'],
  ['GC', '1.1.0'],
] as const;
for (const [command, since] of GATES) {
  for (const version of SUPPORTED.filter((v) => SUPPORTED.indexOf(v) < SUPPORTED.indexOf(since))) {
    test(`${command} on config version ${version} (before ${since}) fails with code 1`, async (t) => {
      const agent = await startFakeAgent(t);
      const conf = netConf(version, agent.socket, { prevResult: prevResultFor(version), 'cni.dev/valid-attachments': [] });
      const r = await invoke(t, podEnv(command), conf);
      assertCniError(t, r, 1, new RegExp(`does not allow ${command}`));
      t.is(r.out?.cniVersion, version);
      t.deepEqual(agent.requests, []);
    });
  }
}

const REQUIRED_ENV: Record<string, string[]> = {
  ADD: ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  CHECK: ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_NETNS', 'CNI_IFNAME'],
  DEL: ['CNI_COMMAND', 'CNI_CONTAINERID', 'CNI_IFNAME'],
};
for (const [command, vars] of Object.entries(REQUIRED_ENV)) {
  for (const name of vars) {
    for (const value of [undefined, '']) {
      test(`${command} with ${name} ${value === undefined ? 'unset' : 'empty'} fails with code 4 naming it`, async (t) => {
        const agent = await startFakeAgent(t);
        const r = await invoke(t, podEnv(command, { [name]: value }), netConf('1.1.0', agent.socket, { prevResult: prevResultFor('1.1.0') }));
        assertCniError(t, r, 4, new RegExp(name));
        t.deepEqual(agent.requests, []);
      });
    }
  }
}

test('several missing variables are named in one error', async (t) => {
  const r = await invoke(t, { CNI_COMMAND: 'ADD' }, netConf('1.0.0', '/nonexistent.sock'));
  assertCniError(t, r, 4, /CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME missing for ADD/);
});

test('DEL does not need CNI_NETNS', async (t) => {
  const agent = await startFakeAgent(t);
  const r = await invoke(t, podEnv('DEL', { CNI_NETNS: undefined }), netConf('1.0.0', agent.socket));
  t.is(r.code, 0);
  t.is(agent.requests.length, 1);
});

for (const command of ['ADD', 'DEL', 'CHECK', 'STATUS', 'GC']) {
  test(`${command} does not need CNI_PATH (optional in spec 1.x, no delegate plugins)`, async (t) => {
    const agent = await startFakeAgent(t);
    const conf = netConf('1.1.0', agent.socket, { prevResult: prevResultFor('1.1.0'), 'cni.dev/valid-attachments': [] });
    const r = await invoke(t, podEnv(command, { CNI_PATH: undefined }), conf);
    t.is(r.code, 0, r.stdout);
  });
}

for (const command of ['add', 'FOO', 'VERSIONS']) {
  test(`unknown CNI_COMMAND ${command} fails with code 4`, async (t) => {
    const r = await invoke(t, podEnv(command), netConf('1.0.0', '/nonexistent.sock'));
    assertCniError(t, r, 4, new RegExp(`unknown CNI_COMMAND "${command}"`));
  });
}

for (const [label, env] of [
  ['a container id starting with "-"', { CNI_CONTAINERID: '-abc' }],
  ['a container id with "/"', { CNI_CONTAINERID: 'a/b' }],
  ['an interface name of 16 characters', { CNI_IFNAME: 'eth0123456789012' }],
  ['an interface name with ":"', { CNI_IFNAME: 'eth0:1' }],
  ['an interface name ".."', { CNI_IFNAME: '..' }],
] as const) {
  test(`ADD with ${label} fails with code 4`, async (t) => {
    const r = await invoke(t, podEnv('ADD', env), netConf('1.0.0', '/nonexistent.sock'));
    assertCniError(t, r, 4, /CNI_CONTAINERID|CNI_IFNAME/);
  });
}

test('ADD with a CNI_ARGS pair that is not KEY=VALUE fails with code 4', async (t) => {
  const r = await invoke(t, podEnv('ADD', { CNI_ARGS: 'K8S_POD_NAME=a;garbage' }), netConf('1.0.0', '/nonexistent.sock'));
  assertCniError(t, r, 4, /CNI_ARGS: invalid pair "garbage"/);
});

for (const [label, stdin] of [
  ['malformed JSON', '{"cniVersion": "1.0.0",'],
  ['a JSON array', '[]'],
  ['a JSON string', '"1.0.0"'],
  ['empty stdin', ''],
] as const) {
  test(`ADD with ${label} on stdin fails with code 6`, async (t) => {
    const r = await invoke(t, podEnv('ADD'), stdin);
    assertCniError(t, r, 6);
    t.is(r.out?.cniVersion, '1.1.0', 'no config version known: the preferred one');
  });
}

for (const kind of ['string', 'Buffer'] as const) {
  test(`stdin over 1 MiB (${kind}) fails with code 6, not a crash`, async (t) => {
    const big = JSON.stringify({ ...netConf('1.0.0', '/x.sock'), pad: 'x'.repeat(1 << 20) });
    const r = await invoke(t, podEnv('ADD'), kind === 'string' ? big : Buffer.from(big));
    assertCniError(t, r, 6, /larger than 1048576 bytes/);
  });
}

// Invalid plugin keys: code 7 naming the field (ADD is strict; DEL is lenient, see cni-del-check.test.ts).
const INVALID_FIELDS: [field: string, value: unknown][] = [
  ['name', ''],
  ['name', 'bad name'],
  ['type', 3],
  ['cniVersion', 1],
  ['agent_socket', 'relative/cni.sock'],
  ['agent_socket', 7],
  ['agent_timeout_ms', 0],
  ['agent_timeout_ms', 300_001],
  ['agent_timeout_ms', 1.5],
  ['agent_timeout_ms', '1000'],
  ['exclude_namespaces', 'kube-system'],
  ['exclude_namespaces', [1]],
  ['agent_namespace', ''],
  ['log_level', 'verbose'],
  ['prevResult', []],
  ['prevResult', { ips: [{ gateway: '10.0.0.1' }] }],
  ['prevResult', { ips: [{ address: '10.0.0.5/24', interface: -1 }] }],
  ['cni.dev/valid-attachments', [{ containerID: 'a' }]],
];
for (const [field, value] of INVALID_FIELDS) {
  test(`ADD with ${field}=${JSON.stringify(value)} fails with code 7 naming ${field}`, async (t) => {
    const agent = await startFakeAgent(t);
    const r = await invoke(t, podEnv('ADD'), { ...netConf('1.0.0', agent.socket), [field]: value });
    assertCniError(t, r, 7, new RegExp(`"${field.replace(/[./]/g, '\\$&')}`));
    t.deepEqual(agent.requests, []);
  });
}

test('unknown configuration keys (runtimeConfig, capabilities, ...) are ignored', async (t) => {
  const agent = await startFakeAgent(t);
  const conf = netConf('1.0.0', agent.socket, { capabilities: { portMappings: true }, runtimeConfig: {}, args: {} });
  const r = await invoke(t, podEnv('ADD'), conf);
  t.is(r.code, 0, r.stdout);
});

// main.ts turns anything that is not a CniError into code 999 instead of crashing; a throwing env stands in for a bug.
for (const [label, thrown, msg] of [
  ['an Error', new Error('boom'), /^internal error in ambient-cni: boom$/],
  ['a non-Error value', 'just a string', /^internal error in ambient-cni: non-error thrown: just a string$/],
] as const) {
  test(`a bug throwing ${label} becomes code 999 with a logged stack`, async (t) => {
    const env = new Proxy<Record<string, string | undefined>>({}, {
      get() {
        throw thrown;
      },
    });
    const r = await invoke(t, env, '{}');
    assertCniError(t, r, 999, msg);
    t.regex(String(r.out?.details), /bug/);
    t.true(r.logs.some((l) => l.msg === 'command failed' && typeof l.err === 'object'));
  });
}
