#!/usr/bin/env -S node --single-threaded-gc --max-semi-space-size=4 --v8-pool-size=1
// `ambient-node`: the node agent daemon (`agent`) and the node-level commands that query it (`status`, `pods`, `rules`,
// `certs`, `conns`, `services`, `policy check`).
// Runs with --single-threaded-gc: the forwarder's buffer churn made V8's concurrent GC threads take ~40% extra CPU (measured).
// And with --max-semi-space-size=4 (MiB): under a burst of ADDs V8 grew the young generation to its default 2 x 16 MiB, all
// of it resident and never given back (+12-20 MB RSS after the first 110 pods, counted as ~150 KB a pod by the churn
// benchmark; scripts/bench/pod-rss.ts). The agent's JS allocations die young (control work, the HBONE bytes never enter
// the heap), so the scavenges it adds cost next to nothing (measured: 35-42 ms of GC pauses per 1,000 new mesh
// connections at 4 MiB and at 16 MiB alike).
// And with --v8-pool-size=1: V8's background threads (4 by default) only compile optimized code here (no GC threads),
// and each kept a glibc malloc arena of its own for the compiler's zones: one thread keeps one (idle RSS -2 to -5 MB;
// scripts/bench/idle-rss.ts).
// These flags are the agent's everywhere it is started: deploy/ (DaemonSet, Containerfile), test/testbed/repo.ts.
// Exit codes: 0 ok, 1 the command ran but found a problem (drift, a denial, an expired certificate), 2 usage or
// configuration error (including naming a pod the agent does not know), 3 the agent is not answering.
// Only what every command needs is imported here: the agent (`agent`) and the install commands' work are loaded by
// their actions, so a query command starts without the agent's dependency tree.
import { Command, InvalidArgumentError, Option } from 'commander';
import { AgentDownError, AgentRequestError, getJson } from './cli/agent-client.js';
import { bytes, table } from './cli/format.js';
import { renderConns, renderPolicyCheck, renderRules, renderServicePolicyCheck, renderServices, rulesDrifted } from './cli/render.js';
import type { ConnectionSnapshot } from './forwarder/connections.js';
import type { PolicyCheckResult, ServicePolicyCheckResult } from './policy/check.js';
import type { ServiceView } from './workload/directory.js';
import { ConfigError, CONFIG_DEFAULTS, REDIRECT_MODES } from './config.js';
import { registerInstallCommands } from './install/cli.js';
import { renderMalformedPolicies, statusHasProblem } from './policy/malformed.js';
import { EVENT_PATHS, type AgentStatus } from './protocol/cni-event.js';
import type { PodView } from './reconcile/enroller.js';
import { CERTS_PATH, CONNS_PATH, PODS_PATH, POLICY_CHECK_PATH, RULES_PATH, SERVICES_PATH } from './protocol/query-paths.js';
import type { RulesReply } from './server/event-server.js';
import type { CertStatus } from './identity/cert-manager.js';

const EXIT = { ok: 0, problem: 1, usage: 2, agentDown: 3 } as const;

function int(v: string): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('must be a non-negative integer');
  return n;
}

async function runAgent(opts: Record<string, unknown>): Promise<void> {
  const { runAgent: run } = await import('./cli/run-agent.js');
  await run(opts);
}

async function query<T>(socket: string, path: string): Promise<T> {
  return getJson<T>(socket, path);
}

function printJson(v: unknown): void {
  process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);
}

export function buildCli(): Command {
  const program = new Command('ambient-node')
    .description('ambient-node: the node agent of a sidecarless service mesh, and commands to inspect it')
    .showHelpAfterError()
    .exitOverride();

  program
    .command('agent')
    .description('run the node agent (one per node)')
    .option('--config <file>', 'YAML or JSON config file (flags override it)')
    .option('--node-name <name>', 'this node\'s name (default: $NODE_NAME or the hostname)')
    .option('--state-dir <dir>', `where pod records are persisted (default ${CONFIG_DEFAULTS.stateDir})`)
    .option('--socket <path>', `event socket for the CNI plugin and CLI (default ${CONFIG_DEFAULTS.socketPath})`)
    .option('--workload-source <kind>', 'where pods, namespaces and policies come from: files | kubernetes (default files)')
    .option('--workloads-dir <dir>', `folder of Pod/Namespace YAML for the files source (default ${CONFIG_DEFAULTS.workloadsDir})`)
    .option('--kubeconfig <file>', 'kubernetes source: kubeconfig file (default: in-cluster service account)')
    .option('--proc-root <dir>', `the host's /proc, scanned to find running pods' network namespaces (default ${CONFIG_DEFAULTS.procRoot})`)
    .option('--redirect-mode <mode>', `in-pod redirection backend: ${REDIRECT_MODES.join(' | ')} (default ${CONFIG_DEFAULTS.redirectMode})`)
    // Removed (the native data path is the only one): still parsed, so that parseAgentConfig can say so.
    .addOption(new Option('--data-path <path>').hideHelp())
    .option('--log-level <level>', `fatal | error | warn | info | debug | trace (default ${CONFIG_DEFAULTS.logLevel})`)
    .option('--access-log <bool>', 'true | false: a log line for every connection that ends well; failures are always logged (default true)')
    .option('--preserve-source <bool>', 'true | false: apps see the client\'s address as the peer of inbound connections (IP_TRANSPARENT, CAP_NET_ADMIN, policy routing; default true)')
    .option('--capture-ipv6 [bool]', 'true | false: carry enrolled pods\' IPv6 TCP through the mesh (IPv6 listeners, HBONE over IPv6) instead of refusing it, with every backend (default true; false: IPv6 TCP of enrolled pods is refused in the pod)')
    .option('--pod-lookup-timeout-ms <ms>', `how long ADD waits for the pod to appear in the workload source (default ${CONFIG_DEFAULTS.podLookupTimeoutMs})`, int)
    .option('--trust-domain <domain>', `SPIFFE trust domain of workload identities (default ${CONFIG_DEFAULTS.trustDomain})`)
    .option('--probe-snat-cgroup <path>', 'only sockets of this cgroup v2 path (the kubelet\'s, e.g. /system.slice/kubelet.service) are SNATed as kubelet probes; default: any local process (iptables and ebpf backends)')
    .option('--service-cidrs <cidrs>', 'the cluster\'s Service ranges, comma-separated (e.g. 10.96.0.0/12): an unknown address in them is refused, not sent in clear (default: none)')
    .option('--cluster-domain <domain>', `DNS suffix of Service host names, <svc>.<ns>.svc.<domain> (default ${CONFIG_DEFAULTS.clusterDomain})`)
    .option('--ca <kind>', 'where certificates come from: builtin | istio (default builtin)')
    .option('--ca-dir <dir>', 'builtin CA: folder of the root key and certificate, shareable by nodes (default <state-dir>/ca)')
    .option('--cert-ttl-seconds <s>', `workload certificate lifetime (default ${CONFIG_DEFAULTS.certTtlSeconds})`, int)
    .option('--istio-ca-address <host:port>', 'istio CA: istiod\'s CA address, e.g. istiod.istio-system.svc:15012')
    .option('--istio-ca-root-cert <file>', 'istio CA: PEM roots that sign istiod\'s serving certificate')
    .option('--istio-ca-token-file <file>', `istio CA: bearer JWT, re-read on every request (default ${CONFIG_DEFAULTS.istioCaTokenFile})`)
    .option('--istio-ca-tls-server-name <name>', 'istio CA: name on the CA\'s serving certificate when not the address\'s host')
    .option('--admin-port <port>', `loopback port of the admin API: /config_dump, /logging (default ${CONFIG_DEFAULTS.adminPort})`, int)
    .option('--metrics-port <port>', `loopback port of Prometheus /metrics (default ${CONFIG_DEFAULTS.metricsPort})`, int)
    .option('--readiness-port <port>', `loopback port of /healthz/ready (default ${CONFIG_DEFAULTS.readinessPort})`, int)
    .option('--repair-interval-ms <ms>', `rule/listener verify-and-repair period, 0 disables (default ${CONFIG_DEFAULTS.repairIntervalMs})`, int)
    .option('--drain-seconds <s>', `after handing over to a new agent (an upgrade), how long established connections are served before the rest are cut (default ${CONFIG_DEFAULTS.drainSeconds})`, int)
    .option('--exit-after-handover <bool>', 'true | false: after handing over and draining, exit 0; false: stay up idle (not ready, no locks, no listeners) until SIGTERM, as a DaemonSet needs (default true)')
    .action(runAgent);

  const socketOpt = ['--socket <path>', 'the agent\'s event socket', CONFIG_DEFAULTS.socketPath] as const;
  const outputOpt = ['-o, --output <format>', 'table or json', 'table'] as const;

  program
    .command('status')
    .description('agent health, backend and counts')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string }) => {
      const st = await query<AgentStatus>(o.socket, EVENT_PATHS.status);
      if (o.output === 'json') printJson(st);
      else {
        const lines = [table(['NODE', 'READY', 'BACKEND', 'ENROLLED'], [[st.node, st.ready ? 'yes' : `no (${st.reason ?? ''})`, st.backend, String(st.enrolled)]]), ...renderMalformedPolicies(st)];
        process.stdout.write(`${lines.join('\n')}\n`);
      }
      if (statusHasProblem(st)) process.exitCode = EXIT.problem;
    });

  program
    .command('pods')
    .description('every pod the agent knows on this node: captured or not, IPs, bytes carried')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string }) => {
      const r = await query<{ pods: PodView[] }>(o.socket, PODS_PATH);
      if (o.output === 'json') return printJson(r);
      const rows = r.pods.map((p) => [
        `${p.namespace}/${p.name}`,
        p.state === 'enrolled' ? (p.listening ? 'CAPTURED' : 'ERROR') : 'NOT-CAPTURED',
        p.ips.join(','),
        p.backend,
        p.stats ? String(p.stats.outbound.opened + p.stats.inbound.opened) : '-',
        p.stats ? bytes(p.stats.outbound.bytesFromDownstream + p.stats.inbound.bytesToDownstream) : '-',
        p.stats ? bytes(p.stats.outbound.bytesToDownstream + p.stats.inbound.bytesFromDownstream) : '-',
      ]);
      process.stdout.write(`${table(['POD', 'STATE', 'IP', 'BACKEND', 'CONNS', 'SENT', 'RECEIVED'], rows)}\n`);
      if (r.pods.some((p) => p.state === 'enrolled' && !p.listening)) process.exitCode = EXIT.problem;
    });

  program
    .command('rules')
    .description('the redirection rules expected in a pod\'s network namespace, the ones actually there, and any drift')
    .argument('<pod>', 'the pod, as <namespace>/<name>')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (pod: string, o: { socket: string; output: string }) => {
      const r = await query<RulesReply>(o.socket, `${RULES_PATH}?pod=${encodeURIComponent(pod)}`);
      if (o.output === 'json') printJson(r);
      else process.stdout.write(`${renderRules(r)}\n`);
      if (rulesDrifted(r)) process.exitCode = EXIT.problem;
    });

  program
    .command('conns')
    .description('open connections the agent relays: pod, direction, addresses, identities, bytes')
    .option('--pod <pod>', 'only this pod\'s connections (<namespace>/<name>)')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string; pod?: string }) => {
      const r = await query<{ connections: ConnectionSnapshot[] }>(o.socket, CONNS_PATH);
      const connections = o.pod ? r.connections.filter((c) => c.pod === o.pod) : r.connections;
      if (o.output === 'json') printJson({ connections });
      else process.stdout.write(`${renderConns(connections)}\n`);
    });

  program
    .command('services')
    .description('each Service ClusterIP and port, its endpoints: HBONE or plain, ready or not, picked by new connections, node')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string }) => {
      const r = await query<{ services: ServiceView[] }>(o.socket, SERVICES_PATH);
      if (o.output === 'json') return printJson(r);
      process.stdout.write(`${renderServices(r.services)}\n`);
    });

  program
    .command('policy')
    .description('authorization policy tools')
    .command('check')
    .description('the decision for a connection from a service account to a Service\'s or pod\'s port, and the policy that made it (exit 0 allow, 1 deny)')
    .requiredOption('--from <ns/sa>', 'the client\'s namespace and service account')
    .requiredOption('--to <ns/name:port>', 'the destination: a Service (answered per endpoint) or else a pod, and port; ns/pod/NAME:port or ns/service/NAME:port to say which')
    .option('--from-ip <ip>', 'the client\'s IP, for ipBlocks and source.ip conditions')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string; from: string; to: string; fromIp?: string }) => {
      const params = new URLSearchParams({ from: o.from, to: o.to, ...(o.fromIp ? { fromIp: o.fromIp } : {}) });
      const r = await query<PolicyCheckResult | ServicePolicyCheckResult>(o.socket, `${POLICY_CHECK_PATH}?${params.toString()}`);
      if (o.output === 'json') printJson(r);
      else process.stdout.write(`${'service' in r ? renderServicePolicyCheck(r) : renderPolicyCheck(r)}\n`);
      if (!r.allowed) process.exitCode = EXIT.problem;
    });

  program
    .command('certs')
    .description('workload certificates on this node: identity, serial, validity, state, next rotation')
    .option(...socketOpt)
    .option(...outputOpt)
    .action(async (o: { socket: string; output: string }) => {
      const r = await query<{ identities: CertStatus[]; counters: Record<string, number> }>(o.socket, CERTS_PATH);
      if (o.output === 'json') return printJson(r);
      const when = (d: string | Date | undefined): string => (d ? new Date(d).toISOString().replace('.000Z', 'Z') : '-');
      const rows = r.identities.map((c) => [c.identity, c.state, c.serial ?? '-', when(c.notBefore), when(c.notAfter), when(c.nextRenewal), c.lastError ?? '']);
      process.stdout.write(`${table(['IDENTITY', 'STATE', 'SERIAL', 'NOT-BEFORE', 'NOT-AFTER', 'NEXT-ROTATION', 'LAST-ERROR'], rows)}\n`);
      if (r.identities.some((c) => c.state === 'expired')) process.exitCode = EXIT.problem;
    });

  registerInstallCommands(program);
  return program;
}

async function main(argv: string[]): Promise<void> {
  try {
    await buildCli().parseAsync(argv);
  } catch (err) {
    const e = err as { code?: string; exitCode?: number };
    if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') process.exit(EXIT.ok);
    if (typeof e.code === 'string' && e.code.startsWith('commander.')) process.exit(EXIT.usage);
    if (err instanceof AgentDownError) {
      process.stderr.write(`ambient-node: ${err.message}\n`);
      process.exit(EXIT.agentDown);
    }
    if (err instanceof AgentRequestError) {
      process.stderr.write(`ambient-node: ${err.message}\n`);
      process.exit(err.status < 500 ? EXIT.usage : EXIT.problem);
    }
    if (err instanceof ConfigError) {
      process.stderr.write(`ambient-node: ${err.message}\n`);
      process.exit(EXIT.usage);
    }
    process.stderr.write(`ambient-node: ${(err as Error).message}\n`);
    process.exit(EXIT.problem);
  }
}

void main(process.argv);
