// Prometheus metrics of one agent: Istio's standard TCP series (recorded at connection open and close, never per byte)
// and the agent's own series, most of them collected at scrape time from the components' counters. A private Registry:
// no prom-client globals, so several agents (tests) in one process never share series.
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { CertStatus, CertCounters } from '../identity/cert-manager.js';
import type { EnrollerCounters } from '../reconcile/enroller-counters.js';
import type { ServiceRef } from '../workload/service-table.js';

/** response_flags values, ztunnel's ("-" = none). */
export const RESPONSE_FLAGS = {
  none: '-',
  /** Refused or closed by policy: an AuthorizationPolicy, or PeerAuthentication STRICT for plaintext. */
  denied: 'DENY',
  /** The upstream (the app, or the peer's HBONE tunnel) could not be connected. */
  upstreamFailure: 'CONNECT',
  /** A Service with no ready endpoint (Envoy's flag): refused before any dial. */
  noHealthyUpstream: 'UH',
} as const;

export const TCP_LABELS = [
  'reporter',
  'source_workload', 'source_workload_namespace', 'source_principal',
  'destination_workload', 'destination_workload_namespace', 'destination_principal',
  'destination_service', 'destination_service_name', 'destination_service_namespace',
  'connection_security_policy', 'response_flags',
] as const;
export type TcpLabelName = (typeof TCP_LABELS)[number];
export type TcpLabels = Record<TcpLabelName, string>;

export interface Peer {
  workload?: string | undefined;
  namespace?: string | undefined;
  principal?: string | undefined;
}

/** Builds the label set of one connection; unknown parts are "unknown" as in Istio. Pure. */
export function connectionLabels(c: {
  reporter: 'source' | 'destination';
  source: Peer;
  destination: Peer;
  /** The Service the connection was addressed to, when there was one. */
  service?: ServiceRef | undefined;
  mtls: boolean;
  responseFlags?: string;
}): TcpLabels {
  const v = (s: string | undefined): string => (s ? s : 'unknown');
  return {
    reporter: c.reporter,
    source_workload: v(c.source.workload),
    source_workload_namespace: v(c.source.namespace),
    source_principal: v(c.source.principal),
    destination_workload: v(c.destination.workload),
    destination_workload_namespace: v(c.destination.namespace),
    destination_principal: v(c.destination.principal),
    destination_service: v(c.service?.hostname),
    destination_service_name: v(c.service?.name),
    destination_service_namespace: v(c.service?.namespace),
    connection_security_policy: c.mtls ? 'mutual_tls' : 'none',
    response_flags: c.responseFlags ?? RESPONSE_FLAGS.none,
  };
}

/** What the forwarder calls: once when a connection opens, once when it closes (bytes from the sockets' counters). */
export interface ConnectionObserver {
  opened(labels: TcpLabels): void;
  /** sent: bytes toward the client (the response side); received: bytes from the client. */
  closed(labels: TcpLabels, sent: number, received: number): void;
}

/** Enrolment takes ~10-60 ms on a quiet node; the buckets resolve that range and the tail up to 10 s. */
export const ENROLMENT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The components the agent series are collected from at scrape time. */
export interface MetricSources {
  enrolledCount: () => number;
  enrollerCounters: () => EnrollerCounters;
  certSnapshot: () => CertStatus[];
  certCounters: () => CertCounters;
  /** Policies that failed to parse and stand as fail-closed placeholders (absent: 0). */
  malformedPolicies?: () => number;
  now?: () => number;
}

export class AgentMetrics implements ConnectionObserver {
  readonly registry = new Registry();
  private readonly opens: Counter<TcpLabelName>;
  private readonly closes: Counter<TcpLabelName>;
  private readonly sentBytes: Counter<TcpLabelName>;
  private readonly receivedBytes: Counter<TcpLabelName>;
  private readonly plugin: Counter<'command' | 'result'>;
  private readonly enrolment: Histogram<'backend'>;

  constructor(src: MetricSources) {
    const registers = [this.registry];
    const tcp = (name: string, help: string): Counter<TcpLabelName> => new Counter({ name, help, labelNames: TCP_LABELS, registers });
    this.opens = tcp('istio_tcp_connections_opened_total', 'TCP connections opened');
    this.closes = tcp('istio_tcp_connections_closed_total', 'TCP connections closed');
    this.sentBytes = tcp('istio_tcp_sent_bytes_total', 'Bytes sent toward the client (response direction), counted at close');
    this.receivedBytes = tcp('istio_tcp_received_bytes_total', 'Bytes received from the client (request direction), counted at close');
    this.plugin = new Counter({ name: 'ambient_node_plugin_requests_total', help: 'CNI plugin requests by command and result', labelNames: ['command', 'result'], registers });
    this.enrolment = new Histogram({
      name: 'ambient_node_enrolment_duration_seconds', help: 'Time to enrol a pod: rules installed and listeners open (successful enrolments)',
      labelNames: ['backend'], buckets: ENROLMENT_BUCKETS, registers,
    });
    const now = src.now ?? Date.now;
    new Gauge({ name: 'ambient_node_pods_enrolled', help: 'Pods enrolled (captured) on this node', registers, collect() { this.set(src.enrolledCount()); } });
    new Gauge({
      name: 'ambient_node_malformed_policies', help: 'AuthorizationPolicies and PeerAuthentications that failed to parse and deny everything in their scope until fixed',
      registers, collect() { this.set(src.malformedPolicies?.() ?? 0); },
    });
    const fromCounter = (name: string, help: string, read: () => number): void => {
      // A gauge mirroring a monotonic counter kept elsewhere; exposed with the counter's _total name.
      new Counter({ name, help, registers, collect() { this.reset(); this.inc(read()); } });
    };
    fromCounter('ambient_node_enrolment_failures_total', 'Pod enrolments that failed', () => src.enrollerCounters().enrolmentFailures);
    fromCounter('ambient_node_rule_repairs_total', 'In-pod or node rules found drifted and restored', () => src.enrollerCounters().ruleRepairs);
    fromCounter('ambient_node_capture_family_refusals_total', 'Pods refused enrolment because the backend captures none of their address families (e.g. IPv6-only)', () => src.enrollerCounters().captureRefusals);
    fromCounter('ambient_node_ca_request_failures_total', 'Certificate signing requests that failed', () => src.certCounters().caFailures);
    new Gauge({
      name: 'ambient_node_certificate_expiry_seconds', help: 'Seconds until each workload certificate expires (negative: expired)', labelNames: ['identity'], registers,
      collect() {
        this.reset();
        for (const c of src.certSnapshot()) if (c.notAfter) this.set({ identity: c.identity }, (new Date(c.notAfter).getTime() - now()) / 1000);
      },
    });
  }

  opened(labels: TcpLabels): void {
    this.opens.inc(labels);
  }

  closed(labels: TcpLabels, sent: number, received: number): void {
    this.closes.inc(labels);
    if (sent > 0) this.sentBytes.inc(labels, sent);
    if (received > 0) this.receivedBytes.inc(labels, received);
  }

  enrolled(backend: string, seconds: number): void {
    this.enrolment.observe({ backend }, seconds);
  }

  pluginRequest(command: string, result: string): void {
    this.plugin.inc({ command, result });
  }

  text(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
