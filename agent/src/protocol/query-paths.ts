// The event socket's query endpoints, shared by the event server and the CLI commands that call them.
// A module of constants only, so a CLI command loads these names without the server and its dependencies.

export const PODS_PATH = '/v1/pods';
/** Certificates per identity, CA counters and HBONE pool counters. */
export const CERTS_PATH = '/v1/certs';
/** The native plugin shim's endpoint (cni/shim/ambient-cni.c): a whole CNI invocation, run in-process. */
export const EXEC_PATH = '/v1/cni/exec';
/** Open relayed connections of every enrolled pod. */
export const CONNS_PATH = '/v1/conns';
/** `?pod=<ns>/<name>`: expected vs actual in-pod rules and drift, plus the node rules. */
export const RULES_PATH = '/v1/rules';
/** `?from=<ns>/<sa>&to=<ns>/<name>:<port>[&fromIp=<ip>]`: the authorization decision (per endpoint for a Service). */
export const POLICY_CHECK_PATH = '/v1/policy/check';
/** Every Service port at its ClusterIP, with endpoints, mesh membership and readiness. */
export const SERVICES_PATH = '/v1/services';
