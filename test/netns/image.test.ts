// The container image end to end: built by scripts/build-image.sh (its podman store caches bases and layers), what it
// holds, install-cni from it into a scratch CNI dir, and the imaged agent as one testbed node's agent carrying HBONE.
import type { ExecutionContext } from 'ava';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { chmod, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { netnsTest, withTestbed } from '../testbed/ava.js';
import { AGENT_MAIN, AGENT_NODE_FLAGS, REPO_ROOT } from '../testbed/repo.js';
import { captureFabric } from './capture-wire.js';
import { AMBIENT, agentPod, ask, hasOurRules, podRules, sendRandom, startEcho, startSink } from './helpers.js';

const MARKER = 'AMBIENT-NODE-IMAGE-MARKER-51c2';
/** The whole image build may run inside the first test that needs it (cold store: ~6 min measured here). */
const BUILD_TIMEOUT_MS = 15 * 60_000;
const MIB = 1024 * 1024;

interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Run a program to completion (bounded), never throwing for a non-zero exit. */
function run(cmd: string, args: readonly string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; input?: string } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      args,
      { env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * MIB, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof err.code === 'number' ? err.code : -1;
        resolve({ code, stdout: String(stdout), stderr: String(stderr) + (err !== null && code === -1 ? `\n${err.message}` : '') });
      },
    );
    child.stdin?.end(opts.input ?? '');
  });
}

/** podman on the build script's own store: its global arguments and environment. */
interface Podman {
  image: string;
  sizeBytes: number;
  args: string[];
  env: NodeJS.ProcessEnv;
}

let built: Promise<Podman> | undefined;

/** scripts/build-image.sh once per test process (a no-op past its layer cache when nothing changed). */
function buildImage(t: ExecutionContext): Promise<Podman> {
  built ??= (async () => {
    const script = join(REPO_ROOT, 'scripts/build-image.sh');
    const started = Date.now();
    // AMBIENT_TEST_IMAGE=<ref>: test that image from the script's store as it is (e.g. one built from another checkout).
    const given = process.env.AMBIENT_TEST_IMAGE;
    const b = given
      ? { code: 0, stderr: '', stdout: `image=${given}\n` }
      : await run('bash', [script], { timeoutMs: BUILD_TIMEOUT_MS - 30_000 });
    if (b.code !== 0) throw new Error(`scripts/build-image.sh exited ${b.code}\n${b.stderr.slice(-4000)}`);
    const out = Object.fromEntries(b.stdout.trim().split('\n').map((l) => l.split('=', 2) as [string, string]));
    const printed = await run('bash', [script, '--print-podman']);
    const [confLine, ...args] = printed.stdout.trim().split('\n');
    const image = out.image;
    if (image === undefined || confLine?.startsWith('CONTAINERS_CONF=') !== true) throw new Error(`unexpected build-image output: ${b.stdout}`);
    const p: Podman = { image, sizeBytes: 0, args, env: { ...process.env, CONTAINERS_CONF: confLine.slice('CONTAINERS_CONF='.length) } };
    const size = await podman(p, ['image', 'inspect', '--format', '{{.Size}}', image]);
    if (size.code !== 0) throw new Error(`no image ${image} in the build script's store: ${size.stderr}`);
    p.sizeBytes = Number(size.stdout.trim());
    t.log(`image ${image}: ${(p.sizeBytes / 1e6).toFixed(1)} MB (${(p.sizeBytes / MIB).toFixed(1)} MiB), ${given ? 'given' : `build-image.sh took ${((Date.now() - started) / 1000).toFixed(1)} s`}`);
    return p;
  })();
  return built;
}

function podman(p: Podman, args: readonly string[], timeoutMs = 120_000): Promise<RunResult> {
  return run('podman', [...p.args, ...args], { env: p.env, timeoutMs });
}

/** A container name owned by this test, removed (only it) at teardown even when the test fails. */
function ownedName(t: ExecutionContext, p: Podman, role: string): string {
  const name = `ambient-img-${randomBytes(3).toString('hex')}-${role}`;
  t.teardown(async () => {
    await podman(p, ['rm', '--force', '--ignore', '--time', '0', name]);
  });
  return name;
}

/**
 * This process's own limits, which podman may set at or below, never above (EPERM here). Measured on this machine: nproc
 * is refused above 32768 (pid_max) even below the current 96367, so it is capped there.
 */
function ulimitArgs(): string[] {
  const limits = readFileSync('/proc/self/limits', 'utf8');
  const pick = (label: string, cap = Number.MAX_SAFE_INTEGER): string => {
    const m = new RegExp(`^${label}\\s+(\\d+|unlimited)\\s+(\\d+|unlimited)`, 'm').exec(limits);
    if (!m) throw new Error(`no "${label}" in /proc/self/limits`);
    const value = (v: string | undefined): number => Math.min(v === 'unlimited' || v === undefined ? cap : Number(v), cap);
    return `${value(m[1])}:${value(m[2])}`;
  };
  const pidMax = Number(readFileSync('/proc/sys/kernel/pid_max', 'utf8').trim());
  return ['--ulimit', `nofile=${pick('Max open files')}`, '--ulimit', `nproc=${pick('Max processes', pidMax)}`];
}

interface ManifestContainer {
  name: string;
  command: string[];
  args: string[];
  securityContext: { runAsUser?: number; readOnlyRootFilesystem?: boolean; capabilities: { add?: string[]; drop?: string[] } };
}

/** The DaemonSet's containers as `kubectl kustomize deploy/base` renders them: the image is run the way they say. */
async function manifestContainers(): Promise<Record<string, ManifestContainer>> {
  const r = await run('kubectl', ['kustomize', join(REPO_ROOT, 'deploy/base')]);
  if (r.code !== 0) throw new Error(`kubectl kustomize deploy/base: ${r.stderr}`);
  const ds = parseAllDocuments(r.stdout).map((d) => d.toJS() as { kind: string; spec?: { template: { spec: { containers: ManifestContainer[] } } } })
    .find((o) => o.kind === 'DaemonSet');
  return Object.fromEntries((ds?.spec?.template.spec.containers ?? []).map((c) => [c.name, c]));
}

/** podman flags for a container's securityContext: user, read-only root, exactly its capabilities. */
function securityArgs(c: ManifestContainer): string[] {
  const sc = c.securityContext;
  return [
    ...(sc.runAsUser !== undefined ? ['--user', String(sc.runAsUser)] : []),
    ...(sc.readOnlyRootFilesystem === true ? ['--read-only'] : []),
    ...(sc.capabilities.drop ?? []).flatMap((cap) => ['--cap-drop', cap]),
    ...(sc.capabilities.add ?? []).flatMap((cap) => ['--cap-add', cap]),
  ];
}

const shq = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

netnsTest.serial('the image: Node 20, the built agent and plugin, the node tools, no compilers or tests, non-root by default', async (t) => {
  t.timeout(BUILD_TIMEOUT_MS);
  const p = await buildImage(t);
  const inspect = await podman(p, ['image', 'inspect', '--format', '{{.Config.User}}|{{json .Config.Entrypoint}}', p.image]);
  t.is(inspect.code, 0, inspect.stderr);
  const [user, entrypoint] = inspect.stdout.trim().split('|');
  t.is(user, '65532:65532', 'non-root unless the DaemonSet asks for root');
  t.deepEqual(JSON.parse(entrypoint ?? 'null'), ['node', ...AGENT_NODE_FLAGS, '/opt/ambient-node/dist/agent/src/main.js']);
  const name = ownedName(t, p, 'contents');
  const probe = [
    'node --version',
    'for f in dist/agent/src/main.js dist/bin/ambient-cni dist/bin/ambient-cni.mjs dist/bin/ambient-cni-standalone dist/native/libambient-hbone.so dist/bpf/redirect.o dist/agent/src/identity/istioca.proto; do test -s "$f" && echo "has $f"; done',
    'for c in iptables-restore ip6tables-restore iptables-save nft ip ipset nsenter; do command -v "$c" >/dev/null && echo "tool $c"; done',
    'for c in gcc cc clang tsc esbuild npm; do command -v "$c" >/dev/null && echo "compiler $c"; done',
    'test -e test || test -e dist/test || echo "no tests"',
    'test -e node_modules/ava || test -e node_modules/typescript || echo "no dev dependencies"',
    'id -u',
  ].join('; ');
  const r = await podman(p, ['run', '--rm', '--name', name, '--network', 'none', '--pull', 'never', ...ulimitArgs(), '--workdir', '/opt/ambient-node', '--entrypoint', 'sh', p.image, '-c', probe]);
  t.is(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  t.regex(lines[0] ?? '', /^v20\./);
  for (const f of ['main.js', 'ambient-cni', 'ambient-cni.mjs', 'ambient-cni-standalone', 'libambient-hbone.so', 'redirect.o', 'istioca.proto']) {
    t.true(lines.some((l) => l.startsWith('has ') && l.endsWith(`/${f}`)), `image holds ${f}`);
  }
  t.deepEqual(lines.filter((l) => l.startsWith('tool ')).length, 7, lines.join('\n'));
  t.deepEqual(lines.filter((l) => l.startsWith('compiler ')), [], 'no compilers or build tools');
  t.true(lines.includes('no tests') && lines.includes('no dev dependencies'));
  t.is(lines.at(-1), '65532');
  const help = await podman(p, ['run', '--rm', '--name', name, '--network', 'none', '--pull', 'never', ...ulimitArgs(), p.image]);
  t.regex(help.stdout, /install-cni/, 'the entry point is the ambient-node CLI');
});

netnsTest.serial('install-cni from the image, run as the DaemonSet runs it, installs the plugin into a scratch CNI dir', async (t) => {
  t.timeout(BUILD_TIMEOUT_MS);
  const p = await buildImage(t);
  const c = (await manifestContainers())['install-cni'];
  if (c === undefined) throw new Error('no install-cni container in deploy/base');
  const dir = mkdtempSync(join(tmpdir(), 'ambient-img-cni-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bin = join(dir, 'bin');
  const conf = join(dir, 'net.d');
  for (const d of [bin, conf]) mkdirSync(d);
  writeFileSync(join(conf, '10-primary.conflist'), JSON.stringify({
    cniVersion: '1.0.0', name: 'primary',
    plugins: [{ type: 'bridge', bridge: 'cni0', ipam: { type: 'host-local', subnet: '10.244.0.0/24' } }],
  }));
  // Once, without --watch and the DaemonSet lookup (no API server here); the probe is the manifest's own --check.
  const args = c.args.filter((a) => a !== '--watch' && !a.startsWith('--daemonset='));
  const mounts = ['-v', `${bin}:/host/opt/cni/bin`, '-v', `${conf}:/host/etc/cni/net.d`];
  const base = ['run', '--rm', '--network', 'none', '--pull', 'never', '--security-opt', 'no-new-privileges', ...ulimitArgs(), ...securityArgs(c), ...mounts,
    '--entrypoint', JSON.stringify(c.command)];
  const install = await podman(p, [...base, '--name', ownedName(t, p, 'install'), p.image, ...args]);
  t.is(install.code, 0, install.stderr);
  for (const f of ['ambient-cni', 'ambient-cni.mjs', 'ambient-cni-standalone']) t.true(existsSync(join(bin, f)), f);
  const list = JSON.parse(readFileSync(join(conf, '10-primary.conflist'), 'utf8')) as { plugins: Array<{ type: string; agent_socket?: string }> };
  t.deepEqual(list.plugins.map((x) => x.type), ['bridge', 'ambient-cni']);
  t.is(list.plugins.at(-1)?.agent_socket, '/var/run/ambient-node/cni.sock');
  const check = await podman(p, [...base, '--name', ownedName(t, p, 'check'), p.image, ...args, '--check']);
  t.is(check.code, 0, check.stderr);
  // The installed binaries run on the host, which the runtime will exec: the front and the standalone fallback.
  for (const f of ['ambient-cni', 'ambient-cni-standalone']) {
    const v = await run(join(bin, f), [], { env: { CNI_COMMAND: 'VERSION', PATH: '/usr/bin:/bin' }, input: '{"cniVersion":"1.0.0"}', timeoutMs: 20_000 });
    t.is(v.code, 0, `${f}: ${v.stderr}`);
    t.true((JSON.parse(v.stdout) as { supportedVersions: string[] }).supportedVersions.includes('1.0.0'), f);
  }
});

netnsTest.serial('the imaged agent runs one testbed node with the DaemonSet\'s privileges and mounts: 1 MiB each way through HBONE', async (t) => {
  t.timeout(BUILD_TIMEOUT_MS);
  const p = await buildImage(t);
  const agentContainer = (await manifestContainers()).agent;
  if (agentContainer === undefined) throw new Error('no agent container in deploy/base');
  const name = ownedName(t, p, 'agent');
  const scratch = mkdtempSync(join(tmpdir(), 'ambient-img-agent-'));
  t.teardown(() => rmSync(scratch, { recursive: true, force: true }));
  const wrapper = join(scratch, 'agent.sh');
  let imagedNode = '';
  const tb = await withTestbed(t, {
    nodes: 2,
    agentCommand: ['/bin/sh', wrapper],
    agentReadyTimeoutMs: 60_000,
    beforeAgents: async (bed) => {
      imagedNode = bed.nodes[0]?.name ?? '';
      // The shared CA root made as the builtin-ca overlay's Secret is (README), mounted read-only into the container.
      const key = join(bed.caDir, 'root-key.pem');
      mkdirSync(bed.caDir, { recursive: true, mode: 0o700 });
      for (const argv of [
        ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', key],
        ['req', '-x509', '-new', '-key', key, '-subj', '/O=ambient-node/CN=cluster.local root', '-days', '3650',
          '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-out', join(bed.caDir, 'root-cert.pem')],
      ]) {
        const r = await run('openssl', argv);
        if (r.code !== 0) throw new Error(`openssl ${argv[0]}: ${r.stderr}`);
      }
      const xtablesLock = existsSync('/run/xtables.lock') ? ['-v', '/run/xtables.lock:/run/xtables.lock'] : [];
      const podmanRun = [
        'podman', ...p.args, 'run', '--rm', '--name', name, '--pull', 'never', '--network', 'host', ...ulimitArgs(),
        ...securityArgs(agentContainer),
        // The DaemonSet's host mounts, pointed at the testbed's paths: pod netns (HostToContainer), the host's /proc,
        // the run dir (event socket, state, workloads), the xtables lock, and the CA root read-only like the Secret.
        '-v', '/run/netns:/var/run/netns:rslave', '-v', '/proc:/host/proc:ro', '-v', `${bed.runDir}:${bed.runDir}`, ...xtablesLock,
        '-v', `${bed.caDir}:${bed.caDir}:ro`,
        '--entrypoint', JSON.stringify(agentContainer.command), p.image,
      ];
      const host = [process.execPath, ...AGENT_NODE_FLAGS, AGENT_MAIN];
      // Runs inside the node's netns (the testbed's nsenter): --network host is that node's network, as hostNetwork is.
      await writeFile(wrapper, [
        '#!/bin/sh',
        `case " $* " in *" --node-name ${imagedNode} "*)`,
        `  CONTAINERS_CONF=${shq(p.env.CONTAINERS_CONF ?? '')} exec ${podmanRun.map(shq).join(' ')} "$@" --proc-root /host/proc ;;`,
        `*) exec ${host.map(shq).join(' ')} "$@" ;;`,
        'esac',
        '',
      ].join('\n'));
      await chmod(wrapper, 0o755);
    },
  });
  const state = await podman(p, ['inspect', '--format', '{{.State.Running}}', name]);
  t.is(state.stdout.trim(), 'true', `node ${imagedNode}'s agent is the container ${name}`);

  await tb.setNamespace('app', AMBIENT);
  const [inImaged, inHost] = await tb.addPods([
    { node: 0, namespace: 'app', name: 'client', serviceAccount: 'client' },
    { node: 1, namespace: 'app', name: 'server', serviceAccount: 'server' },
  ]);
  if (!inImaged || !inHost) throw new Error('pods missing');
  t.true(hasOurRules(await podRules(inImaged)), 'the imaged agent wrote the redirection rules in its pod');
  const cap = await captureFabric(tb, 'image');
  const sinkHost = await startSink(inHost, 9000);
  const sinkImaged = await startSink(inImaged, 9001);
  const started = Date.now();
  const out = await sendRandom(inImaged, inHost.ip, 9000, MIB);
  t.is(await sinkHost.digest, out, '1 MiB from the imaged node\'s pod arrived intact');
  const back = await sendRandom(inHost, inImaged.ip, 9001, MIB);
  t.is(await sinkImaged.digest, back, '1 MiB to the imaged node\'s pod arrived intact');
  t.log(`2 x 1 MiB across nodes through the imaged agent in ${Date.now() - started} ms`);
  await startEcho(inHost, 9080);
  const asked = await ask(inImaged, inHost.ip, 9080, MARKER);
  t.true(asked.ok, asked.output);
  const wire = await cap.stop();
  t.deepEqual([...wire.payloadPorts], [15008], `only HBONE carried payload, saw flows ${[...wire.flows].join(' ')}`);
  t.false(wire.raw.includes(Buffer.from(MARKER)), 'the app\'s bytes never appear on the wire');
  const view = await agentPod(tb, inImaged);
  t.true((view?.stats?.outbound.hbone ?? 0) >= 1, 'the imaged agent tunnelled outbound');
  t.true((view?.stats?.inbound.hbone ?? 0) >= 1, 'the imaged agent terminated inbound HBONE');
});
