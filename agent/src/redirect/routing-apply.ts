// Runs the in-pod policy-routing batches that policy-routing.ts builds (the netfilter backends' reply routing, the ebpf
// backend's re-injection) inside a pod: the one place that applies them, with the pod's tcp_fwmark_accept. Idempotent.
import { writeFileSync } from 'node:fs';
import { settleAll } from '../errors.js';
import { ToolError, runTool } from '../platform/exec.js';
import { withNetns, type Netns } from '../platform/netns.js';
import { routingBatchOk, type RoutingBatch } from './policy-routing.js';
import { FWMARK_ACCEPT_PATH } from './reply-routing.js';

/**
 * Runs every batch (`ip -<family> -batch -`) in the pod, concurrently; a rule that is already there is not an error
 * (routingBatchOk). Fails only once every batch has finished (settleAll), so no `ip` still runs when a caller rolls back.
 */
export async function applyRoutingBatches(netns: Netns, batches: readonly RoutingBatch[]): Promise<void> {
  await settleAll(batches.map(async (b) => {
    await runTool('ip', b.args, { netns: netns.toolPath, input: b.input }).catch((err: unknown) => {
      if (!(err instanceof ToolError && routingBatchOk(err.stderr))) throw err;
    });
  }), `policy routing in ${netns.path} failed`);
}

/**
 * Sets the pod's net.ipv4.tcp_fwmark_accept (see reply-routing.ts FWMARK_ACCEPT_PATH): on with source preservation's
 * rules in place, off with the ebpf backend (whose egress program passes packets carrying the agent mark, which an app
 * socket must never inherit from the agent's SYN). Synchronous (/proc/sys/net follows the writing thread's netns).
 * Best effort: the error when /proc/sys cannot be written (read-only in an unprivileged container), else undefined.
 */
export function setFwmarkAccept(netns: Netns, on: boolean): Error | undefined {
  try {
    withNetns(netns, () => writeFileSync(FWMARK_ACCEPT_PATH, on ? '1' : '0'));
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error(String(err));
  }
}
