// The installer's pure conflist logic on realistic configs of common CNIs (bridge, flannel, calico, cilium shapes in
// testdata/cni): which file is primary, the entry appended last (goldens), idempotence, removal, malformed input.
import test from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import {
  InstallError,
  insertPlugin,
  isInstalled,
  parseConfigFile,
  pluginEntry,
  removePlugin,
  selectPrimary,
  type Candidate,
} from '../../agent/src/install/cni-config.js';
import type { JsonObject } from '../../cni/src/config.js';
import { assertGolden } from './golden.js';

const SHAPES = ['10-bridge.conf', '10-flannel.conflist', '10-calico.conflist', '05-cilium.conflist'] as const;

function fixture(name: string): string {
  return readFileSync(fileURLToPath(new URL(`./testdata/cni/${name}`, import.meta.url)), 'utf8');
}

function types(text: string): string[] {
  const doc = JSON.parse(text) as { plugins: JsonObject[] };
  return doc.plugins.map((p) => String(p.type));
}

const ENTRY = pluginEntry({ agentSocket: '/var/run/ambient-node/cni.sock', logLevel: 'info' });

for (const shape of SHAPES) {
  test(`${shape}: ambient-cni is appended last, everything else kept (golden)`, (t) => {
    const cfg = parseConfigFile(shape, fixture(shape));
    const out = insertPlugin(cfg, ENTRY);
    t.true(out.changed);
    t.true(out.name.endsWith('.conflist'));
    assertGolden(t, `cni/${out.name}`, out.text);
    const inserted = parseConfigFile(out.name, out.text);
    t.deepEqual(types(out.text).at(-1), 'ambient-cni');
    t.true(isInstalled(inserted, ENTRY));
    // The primary plugins are byte-for-byte the same objects, in the same order.
    const before = cfg.kind === 'conf' ? [(({ cniVersion: _v, name: _n, ...rest }) => rest)(cfg.doc)] : (cfg.doc.plugins as JsonObject[]);
    t.deepEqual((inserted.doc.plugins as JsonObject[]).slice(0, -1), before);
  });

  test(`${shape}: inserting twice changes nothing the second time; removing restores the primary's plugins`, (t) => {
    const first = insertPlugin(parseConfigFile(shape, fixture(shape)), ENTRY);
    const second = insertPlugin(parseConfigFile(first.name, first.text), ENTRY);
    t.false(second.changed);
    t.is(second.text, first.text);
    const removed = removePlugin(parseConfigFile(first.name, first.text));
    t.true(removed.changed);
    t.false(types(removed.text).includes('ambient-cni'));
    if (shape.endsWith('.conflist')) t.deepEqual(JSON.parse(removed.text), JSON.parse(fixture(shape)));
  });
}

test('a single .conf keeps its network name and cniVersion when it becomes a conflist', (t) => {
  const out = insertPlugin(parseConfigFile('10-bridge.conf', fixture('10-bridge.conf')), ENTRY);
  const doc = JSON.parse(out.text) as JsonObject;
  t.is(out.name, '10-bridge.conflist');
  t.is(doc.name, 'containerd-net');
  t.is(doc.cniVersion, '1.0.0');
  t.deepEqual(types(out.text), ['bridge', 'ambient-cni']);
  t.false('cniVersion' in ((doc.plugins as JsonObject[])[0] as JsonObject));
});

test('a .json single config is treated like .conf', (t) => {
  const out = insertPlugin(parseConfigFile('99-loop.json', '{"cniVersion":"0.4.0","name":"n","type":"ptp"}'), ENTRY);
  t.is(out.name, '99-loop.conflist');
  t.deepEqual(types(out.text), ['ptp', 'ambient-cni']);
});

test('a stale or misplaced ambient-cni entry is replaced by one entry, last', (t) => {
  const doc = JSON.parse(fixture('10-calico.conflist')) as { plugins: JsonObject[] };
  doc.plugins.splice(1, 0, { type: 'ambient-cni', agent_socket: '/old.sock' });
  doc.plugins.push({ type: 'ambient-cni', log_level: 'debug' });
  const cfg = parseConfigFile('10-calico.conflist', JSON.stringify(doc));
  t.false(isInstalled(cfg, ENTRY));
  const out = insertPlugin(cfg, ENTRY);
  t.true(out.changed);
  t.deepEqual(types(out.text), ['calico', 'portmap', 'bandwidth', 'ambient-cni']);
  t.deepEqual(JSON.parse(out.text).plugins.at(-1), ENTRY);
});

test('an entry with the same settings in another key order counts as installed', (t) => {
  const reordered = Object.fromEntries(Object.entries(ENTRY).reverse());
  const doc = JSON.parse(fixture('05-cilium.conflist')) as { plugins: JsonObject[] };
  doc.plugins.push(reordered);
  const out = insertPlugin(parseConfigFile('05-cilium.conflist', JSON.stringify(doc)), ENTRY);
  t.false(out.changed);
});

test('the primary is the lexically first valid config file, as the runtime picks it', (t) => {
  const files: Candidate[] = SHAPES.map((name) => ({ name, text: fixture(name) }));
  t.is(selectPrimary(files).primary?.name, '05-cilium.conflist');
  const withoutCilium = files.filter((f) => f.name !== '05-cilium.conflist');
  // "10-bridge.conf" sorts before "10-calico.conflist" byte by byte.
  t.is(selectPrimary(withoutCilium).primary?.name, '10-bridge.conf');
});

test('invalid files are skipped with a reason; other extensions and hidden files are ignored', (t) => {
  const files: Candidate[] = [
    { name: '00-broken.conflist', text: '{"name": "x", "plugins": [' },
    { name: '01-notype.conf', text: '{"cniVersion":"1.0.0","name":"x"}' },
    { name: '02-empty.conflist', text: '{"cniVersion":"1.0.0","name":"x","plugins":[]}' },
    { name: '03-array.conf', text: '[]' },
    { name: '.04-hidden.conflist', text: fixture('10-flannel.conflist') },
    { name: '04-readme.txt', text: 'not a config' },
    { name: '04-calico-kubeconfig', text: 'apiVersion: v1' },
    { name: '10-flannel.conflist', text: fixture('10-flannel.conflist') },
  ];
  const sel = selectPrimary(files);
  t.is(sel.primary?.name, '10-flannel.conflist');
  t.deepEqual(sel.skipped.map((s) => s.name), ['00-broken.conflist', '01-notype.conf', '02-empty.conflist', '03-array.conf']);
  t.regex(sel.skipped[0]?.reason ?? '', /00-broken\.conflist is not valid JSON/);
  t.regex(sel.skipped[1]?.reason ?? '', /has no "type"/);
  t.regex(sel.skipped[2]?.reason ?? '', /empty/);
});

test('a pinned name wins over lexical order and accepts its .conf/.conflist twin', (t) => {
  const files: Candidate[] = SHAPES.map((name) => ({ name, text: fixture(name) }));
  t.is(selectPrimary(files, '10-calico.conflist').primary?.name, '10-calico.conflist');
  t.is(selectPrimary(files, '10-bridge.conflist').primary?.name, '10-bridge.conf');
  t.is(selectPrimary(files, '10-bridge.conf').primary?.name, '10-bridge.conf');
  t.is(selectPrimary(files, '99-missing.conflist').primary, undefined);
  const broken = selectPrimary([{ name: '10-x.conflist', text: '{' }, ...files], '10-x.conflist');
  t.is(broken.primary, undefined);
  t.is(broken.skipped[0]?.name, '10-x.conflist');
});

test('malformed configs are refused with a clear error naming the file', (t) => {
  const err = t.throws(() => parseConfigFile('10-x.conflist', '{"name":"x","plugins":[{"type":"a"},{"nope":1}]}'), { instanceOf: InstallError });
  t.is(err?.code, 'AMB_ERR_CNI_CONFIG_MALFORMED');
  t.regex(err?.message ?? '', /10-x\.conflist plugins\[1\] has no "type".*left untouched/);
  t.throws(() => parseConfigFile('10-x.conflist', '{"plugins":[{"type":"a"}]}'), { message: /has no "name"/ });
});

test('removing the only plugin is refused rather than leaving a list the runtime rejects', (t) => {
  const cfg = parseConfigFile('10-x.conflist', JSON.stringify({ cniVersion: '1.0.0', name: 'x', plugins: [ENTRY] }));
  t.throws(() => removePlugin(cfg), { message: /no plugins left/ });
  const clean = parseConfigFile('10-flannel.conflist', fixture('10-flannel.conflist'));
  t.false(removePlugin(clean).changed);
});

test('plugin settings are validated by the plugin\'s own parser', (t) => {
  t.deepEqual(pluginEntry(), {
    type: 'ambient-cni',
    agent_socket: '/var/run/ambient-node/cni.sock',
    agent_timeout_ms: 10000,
    exclude_namespaces: ['kube-system'],
    agent_namespace: 'ambient-system',
    log_level: 'info',
  });
  t.throws(() => pluginEntry({ agentSocket: 'relative.sock' }), { instanceOf: InstallError, message: /agent_socket.*absolute/ });
  t.throws(() => pluginEntry({ agentTimeoutMs: 0 }), { message: /agent_timeout_ms/ });
  t.throws(() => pluginEntry({ logLevel: 'loud' as never }), { message: /log_level/ });
});
