// The `install-cni` and `uninstall-cni` commands: flags to InstallOptions, one run, a read-only --check, or --watch
// until SIGTERM. Stopping uninstalls only when the named DaemonSet is gone or being deleted (upgrades keep the plugin).
import { type Command, InvalidArgumentError } from 'commander';
import { fileURLToPath } from 'node:url';
import { ConfigError } from '../config.js';
import { isLogLevel } from '../log-levels.js';
import type { Logger } from '../log.js';
import { LOG_LEVELS as PLUGIN_LOG_LEVELS, type LogLevel as PluginLogLevel } from '../../../cni/src/config.js';
import { InstallError, pluginEntry } from './cni-config.js';
import { checkInstalled, installCni, uninstallCni, type InstallOptions } from './install.js';
import { decideOnExit, inClusterApi, lookupDaemonSet, parseDaemonSetRef, type DaemonSetRef, type KubeApi } from './on-exit.js';
import { InstallWatcher } from './watch.js';

export const INSTALL_DEFAULTS = {
  binDir: '/opt/cni/bin',
  confDir: '/etc/cni/net.d',
  /** dist/bin of this build (this file is dist/agent/src/install/cli.js). */
  sourceDir: fileURLToPath(new URL('../../../bin/', import.meta.url)),
} as const;

interface InstallFlags {
  cniBinDir: string;
  cniConfDir: string;
  cniConfName?: string;
  sourceDir: string;
  agentSocket?: string;
  agentTimeoutMs?: number;
  excludeNamespaces?: string[];
  agentNamespace?: string;
  pluginLogLevel?: string;
  logLevel: string;
  watch?: boolean;
  check?: boolean;
  daemonset?: DaemonSetRef;
  kubeApi?: string;
}

function positiveInt(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('must be a positive integer');
  return n;
}

function daemonSetRef(v: string): DaemonSetRef {
  try {
    return parseDaemonSetRef(v);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function list(v: string): string[] {
  return v.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** Registers `install-cni` and `uninstall-cni` on the ambient-node program. */
export function registerInstallCommands(program: Command): void {
  program
    .command('install-cni')
    .description('copy the plugin into the CNI bin dir and append ambient-cni last to the primary CNI config (idempotent)')
    .option('--cni-bin-dir <dir>', 'the host\'s CNI bin dir', INSTALL_DEFAULTS.binDir)
    .option('--cni-conf-dir <dir>', 'the host\'s CNI conf dir', INSTALL_DEFAULTS.confDir)
    .option('--cni-conf-name <file>', 'pin the primary config file (default: the lexically first valid one, as the runtime picks it)')
    .option('--source-dir <dir>', 'where the plugin files to install are', INSTALL_DEFAULTS.sourceDir)
    .option('--agent-socket <path>', 'plugin entry: the agent\'s event socket (default /var/run/ambient-node/cni.sock)')
    .option('--agent-timeout-ms <ms>', 'plugin entry: bound on a request to the agent (default 10000)', positiveInt)
    .option('--exclude-namespaces <list>', 'plugin entry: comma-separated namespaces passed through (default kube-system)', list)
    .option('--agent-namespace <ns>', 'plugin entry: namespace of the agent\'s own pods (default ambient-system)')
    .option('--plugin-log-level <level>', `plugin entry: ${PLUGIN_LOG_LEVELS.join(' | ')} (default info)`)
    .option('--log-level <level>', 'this command\'s log level', 'info')
    .option('--watch', 'keep running: re-insert ambient-cni whenever the conf or bin dir changes')
    .option('--check', 'change nothing; exit 0 when installed as configured, 1 otherwise (a readiness probe)')
    .option('--daemonset <namespace/name>', 'with --watch: on SIGTERM, uninstall only if this DaemonSet is gone or being deleted (default: never uninstall on exit)', daemonSetRef)
    .option('--kube-api <url>', 'API server for the --daemonset lookup (default: in-cluster, with the pod\'s service-account token)')
    .action(async (flags: InstallFlags) => {
      const log = await logger(flags.logLevel);
      const opts = installOptions(flags);
      if (flags.check) {
        const r = await checkInstalled(opts);
        for (const p of r.problems) process.stderr.write(`ambient-node: ${p}\n`);
        if (!r.ok) process.exitCode = 1;
        return;
      }
      if (flags.watch) return watchUntilSignal(opts, log, flags.daemonset, flags.kubeApi);
      await installCni(opts, log);
    });

  program
    .command('uninstall-cni')
    .description('remove ambient-cni from every CNI config that lists it, then its binaries')
    .option('--cni-bin-dir <dir>', 'the host\'s CNI bin dir', INSTALL_DEFAULTS.binDir)
    .option('--cni-conf-dir <dir>', 'the host\'s CNI conf dir', INSTALL_DEFAULTS.confDir)
    .option('--log-level <level>', 'this command\'s log level', 'info')
    .action(async (flags: { cniBinDir: string; cniConfDir: string; logLevel: string }) => {
      await uninstallCni({ binDir: flags.cniBinDir, confDir: flags.cniConfDir }, await logger(flags.logLevel));
    });
}

/** pino is loaded here, when an install command runs, not whenever the CLI starts. */
async function logger(level: string): Promise<Logger> {
  if (!isLogLevel(level)) throw new ConfigError(`--log-level: unknown level ${JSON.stringify(level)}`);
  const { createRootLogger } = await import('../log.js');
  return createRootLogger(level, 'ambient-node-install');
}

function installOptions(f: InstallFlags): InstallOptions {
  if (f.pluginLogLevel !== undefined && !(PLUGIN_LOG_LEVELS as readonly string[]).includes(f.pluginLogLevel)) {
    throw new ConfigError(`--plugin-log-level: must be one of ${PLUGIN_LOG_LEVELS.join(', ')}`);
  }
  try {
    const entry = pluginEntry({
      ...(f.agentSocket !== undefined ? { agentSocket: f.agentSocket } : {}),
      ...(f.agentTimeoutMs !== undefined ? { agentTimeoutMs: f.agentTimeoutMs } : {}),
      ...(f.excludeNamespaces !== undefined ? { excludeNamespaces: f.excludeNamespaces } : {}),
      ...(f.agentNamespace !== undefined ? { agentNamespace: f.agentNamespace } : {}),
      ...(f.pluginLogLevel !== undefined ? { logLevel: f.pluginLogLevel as PluginLogLevel } : {}),
    });
    return {
      sourceDir: f.sourceDir,
      binDir: f.cniBinDir,
      confDir: f.cniConfDir,
      entry,
      ...(f.cniConfName !== undefined ? { pinnedName: f.cniConfName } : {}),
    };
  } catch (err) {
    if (err instanceof InstallError) throw new ConfigError(err.message);
    throw err;
  }
}

/**
 * --watch: install, keep it installed, and on SIGTERM/SIGINT stop watching. The plugin stays unless `ds` is given and
 * the API server says that DaemonSet is gone or being deleted (Istio's rule): an upgrade or restart must leave new pods
 * waiting for the agent, never starting uncaptured.
 */
async function watchUntilSignal(opts: InstallOptions, log: Logger, ds: DaemonSetRef | undefined, kubeApi: string | undefined): Promise<void> {
  const watcher = new InstallWatcher(opts, log);
  const signal = await new Promise<string>((resolve, reject) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
    watcher.start().catch((err: unknown) => {
      void watcher.stop();
      reject(err);
    });
  });
  await watcher.stop();
  if (!ds) {
    log.info({ signal }, 'stopping; ambient-cni stays installed so new pods wait for the agent (uninstall-cni removes it)');
    return;
  }
  const api: KubeApi | { error: string } = kubeApi ? { server: kubeApi } : await inClusterApi().catch((err: unknown) => ({ error: (err as Error).message }));
  const decision = decideOnExit(ds, 'error' in api ? api : await lookupDaemonSet(api, ds));
  log.info({ signal, uninstall: decision.uninstall }, `stopping; ${decision.reason}`);
  if (decision.uninstall) await uninstallCni(opts, log);
}
