// Runs the in-pod policy-routing batches that policy-routing.ts builds (the netfilter backends' reply routing, the ebpf
// backend's re-injection) inside a pod: the one place that applies them. Idempotent, never removes anything.
import { settleAll } from '../errors.js';
import { ToolError, runTool } from '../platform/exec.js';
import type { Netns } from '../platform/netns.js';
import { routingBatchOk, type RoutingBatch } from './policy-routing.js';

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
