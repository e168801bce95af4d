// The installer on a real file system (temp CNI bin and conf dirs): install, idempotence, file mode, pinned name,
// .conf -> .conflist, malformed files left alone, uninstall, no temp files left, and the watcher against a rewriter.
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { copyFile, mkdir, readFile, readdir, rename, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { pluginEntry, type InstallError } from '../../agent/src/install/cni-config.js';
import { atomicWrite, checkInstalled, installCni, uninstallCni, PLUGIN_FILES, type InstallOptions } from '../../agent/src/install/install.js';
import { InstallWatcher } from '../../agent/src/install/watch.js';
import type { Logger } from '../../agent/src/log.js';
import { CNI_SHIM, CNI_STANDALONE, REPO_ROOT } from '../testbed/repo.js';
import { tempDir } from './cni-helpers.js';

const ENTRY = pluginEntry({ agentSocket: '/var/run/ambient-node/cni.sock' });

function fixture(name: string): Promise<string> {
  return readFile(fileURLToPath(new URL(`./testdata/cni/${name}`, import.meta.url)), 'utf8');
}

interface Env {
  opts: InstallOptions;
  log: Logger;
  lines: Array<Record<string, unknown>>;
}

/** A fake host: CNI bin and conf dirs, and a source dir holding stand-ins for the built plugin files. */
async function host(t: ExecutionContext, pinnedName?: string): Promise<Env> {
  const root = await tempDir(t);
  const [sourceDir, binDir, confDir] = ['src', 'bin', 'net.d'].map((d) => join(root, d)) as [string, string, string];
  await Promise.all([sourceDir, binDir, confDir].map((d) => mkdir(d)));
  await writeFile(join(sourceDir, PLUGIN_FILES.front), '#!/bin/sh\necho front\n', { mode: 0o755 });
  await writeFile(join(sourceDir, PLUGIN_FILES.standalone), '#!/bin/sh\necho standalone\n', { mode: 0o700 });
  const lines: Env['lines'] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s) as Record<string, unknown>) });
  return { opts: { sourceDir, binDir, confDir, entry: ENTRY, ...(pinnedName ? { pinnedName } : {}) }, log, lines };
}

async function types(path: string): Promise<string[]> {
  const doc = JSON.parse(await readFile(path, 'utf8')) as { plugins: Array<{ type: string }> };
  return doc.plugins.map((p) => p.type);
}

test('install copies the binaries (0755) and appends ambient-cni to the primary, keeping its mode', async (t) => {
  const { opts, log } = await host(t);
  const path = join(opts.confDir, '10-flannel.conflist');
  await writeFile(path, await fixture('10-flannel.conflist'), { mode: 0o640 });
  const r = await installCni(opts, log);
  t.is(r.primary, path);
  t.true(r.wroteConfig);
  t.deepEqual(r.copied.sort(), [PLUGIN_FILES.front, PLUGIN_FILES.standalone].sort());
  t.deepEqual(await types(path), ['flannel', 'portmap', 'ambient-cni']);
  t.is((await stat(path)).mode & 0o777, 0o640);
  for (const name of r.copied) t.is((await stat(join(opts.binDir, name))).mode & 0o777, 0o755);
  t.is(await readFile(join(opts.binDir, PLUGIN_FILES.front), 'utf8'), '#!/bin/sh\necho front\n');
  t.deepEqual(await checkInstalled(opts), { ok: true, primary: path, problems: [] });
});

test('install is idempotent: a second run writes nothing', async (t) => {
  const { opts, log } = await host(t);
  const path = join(opts.confDir, '10-calico.conflist');
  await writeFile(path, await fixture('10-calico.conflist'));
  await installCni(opts, log);
  const before = await stat(path);
  const text = await readFile(path, 'utf8');
  const again = await installCni(opts, log);
  t.false(again.wroteConfig);
  t.deepEqual(again.copied, []);
  const after = await stat(path);
  t.is(after.ino, before.ino);
  t.is(after.mtimeMs, before.mtimeMs);
  t.is(await readFile(path, 'utf8'), text);
});

test('a single .conf becomes a .conflist with the same mode; the .conf is gone', async (t) => {
  const { opts, log } = await host(t);
  await writeFile(join(opts.confDir, '10-bridge.conf'), await fixture('10-bridge.conf'), { mode: 0o600 });
  const r = await installCni(opts, log);
  const path = join(opts.confDir, '10-bridge.conflist');
  t.is(r.primary, path);
  t.deepEqual(await readdir(opts.confDir), ['10-bridge.conflist']);
  t.deepEqual(await types(path), ['bridge', 'ambient-cni']);
  t.is((await stat(path)).mode & 0o777, 0o600);
  t.false((await installCni(opts, log)).wroteConfig);
});

test('when the primary CNI writes its .conf again beside our .conflist, the next run folds it in and removes it', async (t) => {
  const { opts, log } = await host(t);
  const conf = join(opts.confDir, '10-bridge.conf');
  await writeFile(conf, await fixture('10-bridge.conf'));
  await installCni(opts, log);
  await writeFile(conf, await fixture('10-bridge.conf'));
  // "10-bridge.conf" sorts before "10-bridge.conflist": the runtime would now load the .conf, without ambient-cni.
  t.is((await installCni(opts, log)).primary, join(opts.confDir, '10-bridge.conflist'));
  t.deepEqual(await readdir(opts.confDir), ['10-bridge.conflist']);
  t.deepEqual(await types(join(opts.confDir, '10-bridge.conflist')), ['bridge', 'ambient-cni']);
});

test('the lexically first valid file is the primary; a pinned name overrides it', async (t) => {
  const { opts, log } = await host(t);
  await writeFile(join(opts.confDir, '05-cilium.conflist'), await fixture('05-cilium.conflist'));
  await writeFile(join(opts.confDir, '10-calico.conflist'), await fixture('10-calico.conflist'));
  t.is((await installCni(opts, log)).primary, join(opts.confDir, '05-cilium.conflist'));
  t.false((await types(join(opts.confDir, '10-calico.conflist'))).includes('ambient-cni'));

  const pinned = await host(t, '10-calico.conflist');
  await writeFile(join(pinned.opts.confDir, '05-cilium.conflist'), await fixture('05-cilium.conflist'));
  await writeFile(join(pinned.opts.confDir, '10-calico.conflist'), await fixture('10-calico.conflist'));
  t.is((await installCni(pinned.opts, pinned.log)).primary, join(pinned.opts.confDir, '10-calico.conflist'));
  t.deepEqual(await types(join(pinned.opts.confDir, '05-cilium.conflist')), ['cilium-cni']);
});

test('a malformed pinned config is refused with a clear error and left byte for byte', async (t) => {
  const { opts, log } = await host(t, '10-broken.conflist');
  const broken = '{"cniVersion": "0.3.1", "name": "x", "plugins": [ {"type": "flannel"},\n';
  await writeFile(join(opts.confDir, '10-broken.conflist'), broken);
  const err = await t.throwsAsync<InstallError>(installCni(opts, log));
  t.is(err?.code, 'AMB_ERR_CNI_CONFIG_MALFORMED');
  t.regex(err?.message ?? '', /10-broken\.conflist is not valid JSON.*left untouched/);
  t.is(await readFile(join(opts.confDir, '10-broken.conflist'), 'utf8'), broken);
  t.deepEqual(await readdir(opts.confDir), ['10-broken.conflist']);
});

test('unpinned, a malformed first file is skipped (as the runtime does), logged, and not touched', async (t) => {
  const { opts, log, lines } = await host(t);
  await writeFile(join(opts.confDir, '00-broken.conflist'), '{');
  await writeFile(join(opts.confDir, '10-flannel.conflist'), await fixture('10-flannel.conflist'));
  t.is((await installCni(opts, log)).primary, join(opts.confDir, '10-flannel.conflist'));
  t.is(await readFile(join(opts.confDir, '00-broken.conflist'), 'utf8'), '{');
  t.true(lines.some((l) => l.msg === 'CNI config skipped, as the runtime skips it' && String(l.file).endsWith('00-broken.conflist')));
});

test('no primary config yet is its own error; nothing is written', async (t) => {
  const { opts, log } = await host(t);
  await writeFile(join(opts.confDir, 'calico-kubeconfig'), 'apiVersion: v1\n');
  const err = await t.throwsAsync<InstallError>(installCni(opts, log));
  t.is(err?.code, 'AMB_ERR_CNI_NO_PRIMARY');
  t.deepEqual(await readdir(opts.confDir), ['calico-kubeconfig']);
  t.false((await checkInstalled(opts)).ok);
});

test('uninstall removes the entry from the config and the binaries, and is idempotent', async (t) => {
  const { opts, log } = await host(t);
  const path = join(opts.confDir, '10-calico.conflist');
  const original = await fixture('10-calico.conflist');
  await writeFile(path, original, { mode: 0o644 });
  await installCni(opts, log);
  const r = await uninstallCni(opts, log);
  t.deepEqual(r.configs, [path]);
  t.deepEqual(await types(path), ['calico', 'portmap', 'bandwidth']);
  t.deepEqual(JSON.parse(await readFile(path, 'utf8')), JSON.parse(original));
  t.is((await stat(path)).mode & 0o777, 0o644);
  t.deepEqual(await readdir(opts.binDir), []);
  t.deepEqual(await uninstallCni(opts, log), { configs: [], removed: [] });
});

test('a write that fails leaves neither a partial file nor a temp file', async (t) => {
  const { opts } = await host(t);
  const path = join(opts.confDir, '10-flannel.conflist');
  const original = await fixture('10-flannel.conflist');
  await writeFile(path, original);
  await t.throwsAsync(atomicWrite(path, '{"half":', 0o644, undefined, () => Promise.reject(new Error('vetoed'))), { message: /writing .* failed/ });
  t.is(await readFile(path, 'utf8'), original);
  t.deepEqual(await readdir(opts.confDir), ['10-flannel.conflist']);
});

test('the installed plugin works with no Node on the host: VERSION through the front and its standalone fallback', async (t) => {
  const { opts, log } = await host(t);
  // The real build output: the native front and the standalone executable (what the DaemonSet image installs).
  opts.sourceDir = await tempDir(t);
  await copyFile(CNI_SHIM, join(opts.sourceDir, PLUGIN_FILES.front));
  await copyFile(CNI_STANDALONE, join(opts.sourceDir, PLUGIN_FILES.standalone));
  await writeFile(join(opts.confDir, '10-flannel.conflist'), await fixture('10-flannel.conflist'));
  await installCni(opts, log);
  const r = await execa(join(opts.binDir, PLUGIN_FILES.front), [], {
    env: { CNI_COMMAND: 'VERSION', AMBIENT_CNI_NO_FAST_PATH: '1' },
    extendEnv: false,
    input: '{"cniVersion":"1.0.0"}',
  });
  const out = JSON.parse(r.stdout) as { supportedVersions: string[] };
  t.true(out.supportedVersions.includes('1.1.0'));
});

/** Resolves once `pred` holds after a watcher run (checked after each run; no time limit besides ava's); rejects if it throws. */
function until(w: InstallWatcher, pred: () => Promise<boolean>): Promise<void> {
  return new Promise((resolve, reject) => {
    let checking = false;
    const check = async (): Promise<void> => {
      if (checking) return;
      checking = true;
      try {
        if (await pred()) {
          off();
          resolve();
        }
      } finally {
        checking = false;
      }
    };
    // check() runs from the watcher's callback: a throwing predicate must fail this wait, not go unhandled.
    const fail = (err: unknown): void => {
      off();
      reject(err);
    };
    const off = w.onRun(() => void check().catch(fail));
    void check().catch(fail);
  });
}

test('the watcher waits for the primary config, then re-inserts after every rewrite and warns once when fought', async (t) => {
  const { opts, log, lines } = await host(t);
  const w = new InstallWatcher(opts, log, { fightThreshold: 5, windowMs: 3_600_000, warnEveryMs: 3_600_000, debounceMs: 20, resyncMs: 0 });
  t.teardown(() => w.stop());
  await w.start();
  t.false(w.state.ready);

  const path = join(opts.confDir, '10-flannel.conflist');
  const original = await fixture('10-flannel.conflist');
  const installed = async (): Promise<boolean> => (await readFile(path, 'utf8').catch(() => '')).includes('ambient-cni');
  await writeFile(path, original);
  await until(w, installed);
  t.true(w.state.ready);
  t.is(w.reinserts, 0);

  // A primary CNI that keeps writing its own config back, the way its agent does (write a temp file, rename).
  for (let i = 1; i <= 8; i++) {
    await writeFile(`${path}.tmp`, original);
    await rename(`${path}.tmp`, path);
    await until(w, installed);
    t.is(w.reinserts, i);
  }
  t.deepEqual(await types(path), ['flannel', 'portmap', 'ambient-cni']);
  t.is(w.fightWarnings, 1);
  const warnings = lines.filter((l) => l.code === 'AMB_ERR_CNI_CONFIG_FIGHT');
  t.is(warnings.length, 1);
  t.regex(String(warnings[0]?.msg), /another component keeps rewriting .*10-flannel\.conflist without ambient-cni \(6 times/);
});

test('against a concurrent rewriter, readers never see a partial file from the installer and it ends with ambient-cni last', async (t) => {
  const { opts, log } = await host(t);
  const path = join(opts.confDir, '05-cilium.conflist');
  const original = await fixture('05-cilium.conflist');
  await writeFile(path, original);
  const w = new InstallWatcher(opts, log, { debounceMs: 1, resyncMs: 0 });
  t.teardown(() => w.stop());
  await w.start();

  let done = false;
  let reads = 0;
  const reader = (async () => {
    while (!done) {
      const text = await readFile(path, 'utf8');
      t.notThrows(() => JSON.parse(text), 'a reader saw a partial config');
      reads++;
    }
  })();
  // The rewriter replaces the file atomically, so a partial read could only come from the installer's own writes.
  for (let i = 0; i < 40; i++) {
    await writeFile(`${path}.tmp${i}`, original);
    await rename(`${path}.tmp${i}`, path);
  }
  await until(w, async () => (await types(path)).at(-1) === 'ambient-cni');
  done = true;
  await reader;
  t.true(reads > 0);
  t.true(w.reinserts >= 1);
  t.false((await readdir(opts.confDir)).some((n) => n.includes('ambient-tmp')));
});

test('CLI: install-cni, --check and uninstall-cni against temp dirs', async (t) => {
  const { opts } = await host(t);
  await writeFile(join(opts.confDir, '10-bridge.conf'), await fixture('10-bridge.conf'));
  const cli = (...args: string[]) =>
    execa('node', ['--import=tsx', join(REPO_ROOT, 'agent/src/main.ts'), ...args, '--cni-bin-dir', opts.binDir, '--cni-conf-dir', opts.confDir], { reject: false });
  const src = ['--source-dir', opts.sourceDir];
  t.is((await cli('install-cni', '--check', ...src)).exitCode, 1);
  const bad = await cli('install-cni', ...src, '--agent-socket', 'relative.sock');
  t.is(bad.exitCode, 2);
  t.regex(bad.stderr, /agent_socket.*absolute/);
  const ok = await cli('install-cni', ...src, '--agent-socket', '/run/x.sock', '--exclude-namespaces', 'kube-system,istio-system');
  t.is(ok.exitCode, 0, ok.stderr);
  const doc = JSON.parse(await readFile(join(opts.confDir, '10-bridge.conflist'), 'utf8')) as { plugins: Array<Record<string, unknown>> };
  t.like(doc.plugins.at(-1), { type: 'ambient-cni', agent_socket: '/run/x.sock', exclude_namespaces: ['kube-system', 'istio-system'] });
  t.is((await cli('install-cni', '--check', ...src, '--agent-socket', '/run/x.sock', '--exclude-namespaces', 'kube-system,istio-system')).exitCode, 0);
  t.is((await cli('uninstall-cni')).exitCode, 0);
  t.deepEqual(await readdir(opts.binDir), []);
  t.deepEqual(await types(join(opts.confDir, '10-bridge.conflist')), ['bridge']);
});
