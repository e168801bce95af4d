// Human output of the node CLI's inspection commands (`rules`, `conns`, `services`, `policy check`); scripts use -o json.
// Pure: each takes the agent's JSON answer and returns the text to print.
import type { ConnectionSnapshot } from '../forwarder/connections.js';
import type { PolicyCheckResult, ServicePolicyCheckResult } from '../policy/check.js';
import type { ServiceView } from '../workload/directory.js';
import type { RulesReply } from '../server/event-server.js';
import { formatHostPort } from '../protocol/address.js';
import { bytes, table } from './format.js';

/** Whether a rules reply shows drift anywhere (any attachment, or the node rules). */
export function rulesDrifted(r: RulesReply): boolean {
  return r.attachments.some((a) => !a.ok) || !('ok' in r.node) || !r.node.ok;
}

/** Expected rules marked present or MISSING, then rules found that should not be there, per attachment; then the node. */
export function renderRules(r: RulesReply): string {
  const out: string[] = [];
  for (const a of r.attachments) {
    out.push(`pod ${a.pod} (container ${a.containerId.slice(0, 12)}, ${a.ifname}, netns ${a.netns})`);
    out.push(`  state ${a.state}, backend ${a.backend}, agent listeners ${a.listening ? 'open' : 'NOT OPEN'}`);
    if (a.error) out.push(`  ERROR ${a.error}`);
    const missing = new Set(a.missing);
    out.push(`  expected (${a.expected.length}):`);
    for (const line of a.expected) out.push(`    ${missing.has(line) ? 'MISSING ' : 'ok      '}${line}`);
    for (const line of a.missing.filter((l) => !a.expected.includes(l))) out.push(`    MISSING ${line}`);
    if (a.unexpected.length) {
      out.push(`  unexpected (${a.unexpected.length}):`);
      for (const line of a.unexpected) out.push(`    EXTRA   ${line}`);
    }
    // IPv6 is not captured yet: say what the pod's ip6tables holds, even when it is nothing.
    const v6 = a.ip6tables ?? [];
    if (v6.length === 0) out.push('  ip6tables (IPv6): none of our rules');
    else if (a.backend === 'iptables') out.push(`  ip6tables (IPv6): ${v6.length} of our rules (listed above; they send IPv6 TCP to the agent: carried with --capture-ipv6, else refused)`);
    else {
      out.push(`  ip6tables (IPv6): ${v6.length} of our rules, not this backend's (left by an iptables-mode agent):`);
      for (const line of v6) out.push(`    FOUND   ${line}`);
    }
    const listenerProblem = a.state === 'enrolled' && !a.listening;
    out.push(a.ok ? '  in sync' : `  DRIFT: ${a.missing.length} missing, ${a.unexpected.length} unexpected${listenerProblem ? ', listeners not open' : ''}`);
  }
  if ('ok' in r.node) {
    out.push(r.node.ok ? 'node probe rules: in sync' : `node probe rules: DRIFT (missing: ${r.node.missing.join(' | ') || '-'}; unexpected: ${r.node.unexpected.join(' | ') || '-'})`);
  } else {
    out.push(`node probe rules: cannot check (${r.node.error})`);
  }
  return out.join('\n');
}

function duration(ms: number): string {
  if (ms < 1000) return `${ms}ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)}s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)}m${Math.floor((ms % 60_000) / 1000)}s`;
  return `${Math.floor(ms / 3_600_000)}h${Math.floor((ms % 3_600_000) / 60_000)}m`;
}

export function renderConns(conns: readonly ConnectionSnapshot[]): string {
  const id = (principal: string | undefined, mtls: boolean): string => (mtls && principal ? principal.replace(/^spiffe:\/\//, '') : '-');
  const rows = [...conns].sort((a, b) => a.pod.localeCompare(b.pod) || a.startedAt - b.startedAt).map((c) => [
    c.pod, c.direction, c.src.addr, id(c.src.principal, c.mtls), c.dst.addr, id(c.dst.principal, c.mtls),
    c.service ? `${c.service.namespace}/${c.service.name}` : '-', c.mtls ? 'mTLS' : 'plain', bytes(c.bytesSent), bytes(c.bytesRecv), duration(c.durationMs),
  ]);
  return table(['POD', 'DIRECTION', 'SRC', 'SRC-IDENTITY', 'DST', 'DST-IDENTITY', 'SERVICE', 'SECURITY', 'SENT', 'RECEIVED', 'AGE'], rows);
}

/** One row per endpoint of each Service port (a Service port with none gets one row saying so). */
export function renderServices(services: readonly ServiceView[]): string {
  const rows: string[][] = [];
  for (const s of services) {
    const svc = [`${s.namespace}/${s.name}`, formatHostPort(s.vip, s.port), s.portName || '-', String(s.targetPort)];
    if (s.endpoints.length === 0) rows.push([...svc, '<none>', '-', '-', '-', '-']);
    for (const e of s.endpoints) {
      const ready = e.ready ? 'yes' : e.terminating ? 'no (terminating)' : 'no';
      rows.push([...svc, formatHostPort(e.ip, e.port), e.mesh ? 'HBONE' : 'plain', ready, e.candidate ? 'yes' : 'no', e.node ?? '-']);
    }
  }
  return table(['SERVICE', 'VIP:PORT', 'PORT-NAME', 'TARGET', 'ENDPOINT', 'MESH', 'READY', 'PICKED', 'NODE'], rows);
}

/** A Service check: the overall answer, then each endpoint's decision (or why it has none). */
export function renderServicePolicyCheck(r: ServicePolicyCheckResult): string {
  const s = r.service;
  const out = [
    `${r.allowed ? 'ALLOW' : 'DENY'}  ${r.from.principal}${r.from.ip ? ` (${r.from.ip})` : ''} -> Service ${s.namespace}/${s.name}:${s.port} (${s.vips.join(', ')})`,
    `  reason:     ${r.reason}`,
  ];
  for (const e of r.endpoints) {
    const state = `${e.ready ? 'ready' : 'not ready'}${e.candidate ? '' : ', not picked'}`;
    const head = `  endpoint ${e.endpoint}${e.pod ? ` (${e.pod})` : ''}, ${state}:`;
    if (!e.result) {
      out.push(`${head} ${e.note ?? ''}`);
      continue;
    }
    out.push(`${head} ${e.result.allowed ? 'ALLOW' : 'DENY'}, ${e.result.reason}; decided by ${e.result.policy ?? '(default)'}; PeerAuthentication ${e.result.mtlsMode}`);
  }
  return out.join('\n');
}

export function renderPolicyCheck(r: PolicyCheckResult): string {
  const out = [
    `${r.allowed ? 'ALLOW' : 'DENY'}  ${r.from.principal}${r.from.ip ? ` (${r.from.ip})` : ''} -> ${r.to.pod} ${formatHostPort(r.to.ip, r.to.port)}`,
    `  reason:     ${r.reason}`,
    `  decided by: ${r.policy ?? '(default)'}`,
    `  applicable: ${r.applicable.length ? r.applicable.join(', ') : 'none'}`,
    `  plaintext:  PeerAuthentication ${r.mtlsMode} on port ${r.to.port}: ${r.mtlsMode === 'STRICT' ? 'non-mesh clients refused' : 'non-mesh clients let in (then this policy applies without a principal)'}`,
  ];
  for (const m of r.mtlsMalformed ?? []) out.push(`  malformed:  PeerAuthentication ${m}: plaintext refused until it is fixed`);
  for (const d of r.dryRun) out.push(`  dry-run:    ${d.policy} (${d.action}) ${d.matched ? 'matches' : 'does not match'}`);
  if (r.dryRunAllowed !== undefined) out.push(`  with dry-run policies enforced: ${r.dryRunAllowed ? 'ALLOW' : 'DENY'}`);
  for (const w of r.warnings) out.push(`  warning:    ${w}`);
  return out.join('\n');
}
