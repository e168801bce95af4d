// Where a new connection of an enrolled pod goes: the outbound route (HBONE to a mesh peer, plain TCP, or refused, a
// Service resolved to one endpoint on the way) and whether plaintext arriving on 15006 may reach the app. Pure.
import type { MtlsMode } from '../policy/peer-authentication.js';
import { formatHostPort } from '../protocol/address.js';
import { AGENT_PORTS } from '../redirect/constants.js';
import type { MeshWorkload, ServiceAddressKind } from '../workload/directory.js';
import { noEndpointReason, pickEndpoint, type ServiceEntry, type ServiceRef } from '../workload/service-table.js';
import { RESPONSE_FLAGS } from '../admin/metrics.js';

/** What an outbound decision reads: the mesh workloads and the Service table; every address passed is canonical (canonicalIp). */
export interface OutboundContext {
  lookup: (ip: string) => MeshWorkload | undefined;
  /** The Service port at a ClusterIP and port (outbound resolution to an endpoint); absent: no Services known. */
  service?: (ip: string, port: number) => ServiceEntry | undefined;
  /** Whether the workload source knows the pod an endpoint's targetRef (`Pod/<ns>/<name>`) names, mesh or not. */
  knownPod?: (targetRef: string) => boolean;
  /** A known ClusterIP, an unknown address inside the configured Service ranges, or neither. */
  serviceAddress?: (ip: string) => ServiceAddressKind;
}

/** Where bytes go: an address and port. */
export interface Target {
  address: string;
  port: number;
}

/**
 * An outbound connection's route. `target` is where the app's bytes are delivered (the original destination, or the
 * endpoint a Service resolved to); HBONE reaches it through `target.address:15008` under the peer's identity.
 */
export type OutboundRoute =
  | { kind: 'hbone'; peer: MeshWorkload; target: Target; service?: ServiceRef }
  | { kind: 'passthrough'; target: Target; service?: ServiceRef }
  | { kind: 'refuse'; reason: string; responseFlags: string; service?: ServiceRef };

/**
 * Where an outbound connection goes. Pure given `random`. A Service's ClusterIP and port resolves to one candidate
 * endpoint and its target port (the Service wins over a workload with the same IP, as in ztunnel); the endpoint (or an
 * original destination that is no Service) is reached in HBONE when it is a mesh workload, else in plain TCP. Never in
 * clear when the agent cannot tell: a Service port with no candidate, an endpoint that is itself a Service address, an
 * endpoint pod the directory does not know yet, and an unknown address inside the Service ranges are all refused.
 */
export function decideOutbound(dst: Target, ctx: OutboundContext, random: () => number = Math.random): OutboundRoute {
  const a = dst.address;
  if ((a.startsWith('127.') || a === '::1') && AGENT_PORTS.includes(dst.port)) {
    return { kind: 'refuse', reason: 'connection made straight to the outbound listener (no original destination)', responseFlags: RESPONSE_FLAGS.none };
  }
  const entry = ctx.service?.(dst.address, dst.port);
  if (entry) {
    const service = entry.service;
    const refuse = (reason: string): OutboundRoute => ({ kind: 'refuse', reason, responseFlags: RESPONSE_FLAGS.noHealthyUpstream, service });
    const ep = pickEndpoint(entry, random);
    if (!ep) return refuse(noEndpointReason(entry));
    const target = { address: ep.ip, port: ep.port };
    const peer = ctx.lookup(ep.ip);
    if (peer) return { kind: 'hbone', peer, target, service };
    const via = formatHostPort(dst.address, dst.port);
    const epAddr = formatHostPort(ep.ip, ep.port);
    if (ctx.serviceAddress?.(ep.ip)) return refuse(`no valid endpoint: ${via} resolved to ${epAddr}, itself a Service address (kube-proxy would forward it in clear)`);
    if (ep.targetRef?.startsWith('Pod/') && ctx.knownPod && !ctx.knownPod(ep.targetRef)) {
      return refuse(`no valid endpoint: ${via} resolved to ${epAddr} of ${ep.targetRef.slice(4)}, a pod the workload directory does not know yet (refused rather than sent in clear)`);
    }
    return { kind: 'passthrough', target, service };
  }
  const peer = ctx.lookup(dst.address);
  if (peer) return { kind: 'hbone', peer, target: dst };
  if (ctx.serviceAddress?.(dst.address) === 'unknown') {
    return { kind: 'refuse', reason: `no healthy upstream: ${formatHostPort(dst.address, dst.port)} is in the Service ranges but no Service the agent knows (refused rather than sent in clear)`, responseFlags: RESPONSE_FLAGS.noHealthyUpstream };
  }
  return { kind: 'passthrough', target: dst };
}

/** Whether plaintext arriving on 15006 may reach the app. Pure. `dst.address` and `podIps` canonical. */
export function decidePlaintextInbound(dst: { address: string; port: number }, podIps: readonly string[], mode: MtlsMode): { ok: true } | { ok: false; reason: string } {
  if (!podIps.includes(dst.address)) return { ok: false, reason: `inbound destination ${dst.address} is not this pod (${podIps.join(', ')})` };
  if (AGENT_PORTS.includes(dst.port)) return { ok: false, reason: `port ${dst.port} is reserved for the agent` };
  if (mode === 'STRICT') return { ok: false, reason: `PeerAuthentication STRICT on port ${dst.port}: plaintext refused` };
  return { ok: true };
}
