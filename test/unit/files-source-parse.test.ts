// The files source's two YAML paths (js-yaml at once for files up to FAST_PARSE_MAX_CHARS, `yaml` document by document
// otherwise or when js-yaml refuses): they must read every valid file alike, and broken files must take the `yaml` path.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import { parseAllDocuments } from 'yaml';
import { CORE_SCHEMA, loadAll } from 'js-yaml';
import { documentValues, FAST_PARSE_MAX_CHARS, fastPathFor, parseWorkloadFileEntries, readWindow } from '../../agent/src/workload/files-source.js';
import { REPO_ROOT } from '../testbed/repo.js';

/** What the `yaml` path alone reads: every document's value (the reference). */
const slowValues = (text: string): unknown[] => parseAllDocuments(text).map((d) => d.toJS());
const fastValues = (text: string): unknown[] => [...documentValues(text)].map((d) => ('value' in d ? d.value : 'BROKEN'));

/** Scalars where YAML 1.1, YAML 1.2 and parsers part ways, read by js-yaml: it must read them as `yaml`'s default (1.2 core) does. */
const FAST = [
  'a: yes\nb: no\nc: on\nd: off\ne: y\nf: n',
  'a: true\nb: False\nc: TRUE\nd: ~\ne: null\nf: Null\ng:',
  'a: 0755\nb: 0o17\nc: 0x1F\nd: 1_000\ne: 1:20\nf: 190:20:30\ng: 0b101',
  'a: .inf\nb: -.Inf\nc: .nan\nd: 1e3\ne: 1.5\nf: -0\ng: +12\nh: 1e99',
  'a: 2001-12-14\nb: 2026-01-01T00:00:00Z\nc: 12:30',
  "a: '10.0.0.1'\nb: 10.0.0.1\nc: fd00::1\nd: \"[::1]:80\"",
  'list:\n- one\n- [a, {b: c}]\nblock: |\n  line 1\n  line 2\nfolded: >\n  a\n  b\n',
  '---\na: 1\n---\n---\nb: 2\n...\n',
  '{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"x": "1"}}}',
  '"key with: colon": v\nempty: ""\nmerge:\n  <<: {x: 1}\n',
];

/** What the two parsers read differently (or js-yaml must not decide): left to the `yaml` path by fastPathFor. */
const SLOW = [
  '%YAML 1.1\n---\na: yes\n',
  'a: !!float 1\nb: !!binary aGVsbG8=\nc: !!timestamp 2001-12-14\nd: [!!str 1]\ne: {f: !!int "2"}',
  `{'a':!!float 1}`,
  '["a":!!float 1]',
  'a: 1e400\nb: -1E+999',
  '[1.5e400, 2e-999]',
  '{a: 1e400}',
  '~: x',
  'null: x\n"": y',
  ': x',
  '? complex\n: value',
  '{~: a, b: c}',
  '- : x',
];

test('js-yaml reads the YAML 1.1/1.2 edge cases it is given as the yaml path does', (t) => {
  for (const text of FAST) {
    t.true(fastPathFor(text), `fast path: ${text}`);
    t.deepEqual(fastValues(text), slowValues(text), text);
  }
});

test('what the two parsers read differently is left to the yaml path (and does differ where js-yaml would read it)', (t) => {
  let differ = 0;
  for (const text of SLOW) {
    t.false(fastPathFor(text), `slow path: ${text}`);
    t.deepEqual(fastValues(text), slowValues(text), text);
    let js: unknown;
    try {
      js = loadAll(text, { schema: CORE_SCHEMA });
    } catch {
      js = 'THROWS';
    }
    if (JSON.stringify(js) !== JSON.stringify(slowValues(text))) differ++;
  }
  t.true(differ >= 6, `js-yaml itself reads ${differ} of ${SLOW.length} of them differently: the reason they are routed away`);
  // Aliases are not in fastPathFor: js-yaml refuses them (maxAliases 0), and the yaml path reads them.
  const aliased = 'base: &b {x: 1}\nlist:\n- &x one\n- *x\nm:\n  <<: *b\n';
  t.true(fastPathFor(aliased));
  t.deepEqual(fastValues(aliased), slowValues(aliased));
});

test('the fast path reads every YAML file of the repository (fixtures, manifests) as the yaml path does', (t) => {
  const files: string[] = [];
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      if (e.isDirectory() && e.name !== 'node_modules' && !e.name.startsWith('.')) walk(join(dir, e.name));
      else if (/\.ya?ml$/.test(e.name)) files.push(join(dir, e.name));
    }
  };
  for (const top of ['test', 'deploy']) walk(join(REPO_ROOT, top));
  t.true(files.length > 5, `found ${files.length} YAML files`);
  let fast = 0;
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    if (fastPathFor(text)) fast++;
    t.deepEqual(fastValues(text), slowValues(text), f);
  }
  t.true(fast >= files.length / 2, `${fast} of ${files.length} files read by js-yaml: the comparison is not yaml against itself`);
});

test('invalid YAML, duplicate keys and unknown tags take the yaml path: the same errors and recovery as before', (t) => {
  // Not valid YAML: a broken document, named by the yaml path with its line.
  const broken = [...documentValues('a: [1, 2\nb: 3\n')];
  t.true(broken.length > 0 && broken.every((d) => 'broken' in d));
  // Duplicate keys: `yaml` rejects them, so must the fast path (it throws, and the yaml path decides).
  t.true([...documentValues('a: 1\na: 2\n')].some((d) => 'broken' in d));
  // An unknown tag: js-yaml throws, `yaml` reads it as a string with a warning (not an error): the yaml path's value.
  t.deepEqual(fastValues('a: !custom x\n'), slowValues('a: !custom x\n'));
  // A broken AuthorizationPolicy still stands as a fail-closed placeholder (the yaml path's recovery).
  const entries = parseWorkloadFileEntries('p.yaml', 'apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: ns}\nspec: {rules: [\n');
  t.is(entries.length, 1);
  t.true('error' in (entries[0] ?? {}));
});

test('aliases go to the yaml path (its bound counts their expansion); a file over FAST_PARSE_MAX_CHARS is read by it alike', (t) => {
  const many = `x: &a v\nl: [${Array.from({ length: 150 }, () => '*a').join(', ')}]\n`;
  t.throws(() => parseWorkloadFileEntries('aliases.yaml', many));
  // Ten aliases a level, nine levels deep: 90 alias nodes, 10^9 leaves once expanded. Refused, as `yaml` refuses it.
  const levels = ['l0: &l0 [x, x, x, x, x, x, x, x, x, x]'];
  for (let i = 1; i < 10; i++) levels.push(`l${i}: &l${i} [${Array.from({ length: 10 }, () => `*l${i - 1}`).join(', ')}]`);
  t.throws(() => parseWorkloadFileEntries('laughs.yaml', `${levels.join('\n')}\n`));
  const pods = Array.from({ length: 4000 }, (_, i) => `---\napiVersion: v1\nkind: Pod\nmetadata: {name: pod-${i}, namespace: ns}\nstatus: {podIP: 10.1.${i >> 8}.${i & 255}}\n`).join('');
  t.true(pods.length > FAST_PARSE_MAX_CHARS / 8);
  const big = pods.repeat(Math.ceil((FAST_PARSE_MAX_CHARS + 1) / pods.length));
  t.true(big.length > FAST_PARSE_MAX_CHARS);
  t.false(fastPathFor(big));
  t.true(fastPathFor(pods));
  const small = pods.slice(0, 2000);
  t.deepEqual(fastValues(small), slowValues(small));
  t.is([...documentValues(big)].length, slowValues(big).length);
});

test('a __proto__ label key is refused, never dropped: a policy selecting by it is malformed (fail closed), not namespace-wide', (t) => {
  for (const kind of ['AuthorizationPolicy', 'PeerAuthentication']) {
    const text = `apiVersion: security.istio.io/v1\nkind: ${kind}\nmetadata: {name: p, namespace: ns}\nspec:\n  selector:\n    matchLabels: {__proto__: x}\n`;
    const [entry] = parseWorkloadFileEntries('p.yaml', text);
    t.true(entry !== undefined && 'error' in entry && /__proto__/.test(entry.error), `${kind}: ${JSON.stringify(entry)}`);
  }
  const pod = 'apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: ns, labels: {__proto__: x}}\nstatus: {podIP: 10.1.0.1}\n';
  const [entry] = parseWorkloadFileEntries('pod.yaml', pod);
  t.true(entry !== undefined && 'error' in entry, JSON.stringify(entry));
});

test('ordinary Kubernetes text stays on the fast path: UIDs and hashes with digit-e-digits runs, IPv6, image tags, times', (t) => {
  const text = 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: a\n  uid: 3f2e1d9c-4e123-11e9-8e456-0242ac120002\n  labels: {pod-template-hash: 5d8e123}\n  creationTimestamp: "2026-01-01T00:00:00Z"\nspec: {containers: [{name: c, image: "nginx:1.25"}]}\nstatus: {podIP: fd00::1, podIPs: [{ip: fd00::1}, {ip: 10.0.0.1}]}\n';
  t.true(fastPathFor(text), 'a plain pod goes the fast path');
  for (const slow of ['a: 1e400', '{a: 1e400}', '~: x', 'a: !!str 1', '%YAML 1.1\n---\na: 1']) t.false(fastPathFor(slow), slow);
  t.deepEqual(fastValues(text), slowValues(text));
});

test('the read window: at least one file, then at most 32 files and 16 MiB', (t) => {
  const files = (sizes: number[]): Array<{ size: number }> => sizes.map((size) => ({ size }));
  t.is(readWindow(files(Array(40).fill(10)), 0).length, 32);
  t.is(readWindow(files(Array(40).fill(10)), 32).length, 8);
  t.is(readWindow(files([40 << 20, 1, 1]), 0).length, 1, 'one file past the byte bound is read alone');
  t.is(readWindow(files([10 << 20, 10 << 20, 1]), 0).length, 1);
  t.is(readWindow(files([8 << 20, 8 << 20, 1]), 0).length, 2);
  t.deepEqual(readWindow(files([1]), 1), []);
});
