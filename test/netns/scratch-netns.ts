// A throwaway network namespace of one test's own (lo up), deleted by its exact name after the test, or on a signal or
// exit (a timed-out run) through the testbed's process-wide safety net; with a handle on it and a way to run commands there.
import { execFileSync } from 'node:child_process';
import type { ExecutionContext } from 'ava';
import { execa } from 'execa';
import { Netns } from '../../agent/src/platform/netns.js';
import { registerLive, unregisterLive } from '../testbed/cleanup.js';
import { createNetns, deleteNetns, netnsPath } from '../testbed/netns.js';

export interface ScratchNetns {
  name: string;
  ns: Netns;
  /** `ip netns exec <ns> cmd args`; resolves its stdout. */
  run(cmd: string, ...args: string[]): Promise<string>;
}

/**
 * Creates `<prefix>-<pid>-<random>`, lets `setup` configure it (interfaces, addresses) before the handle is opened, and
 * closes the handle and deletes the namespace in the test's teardown.
 */
export async function scratchNetns(t: ExecutionContext, prefix: string, setup?: (run: ScratchNetns['run']) => Promise<void>): Promise<ScratchNetns> {
  const name = `${prefix}-${process.pid}-${Math.random().toString(36).slice(2, 7)}`;
  const live = {
    destroy: async (): Promise<void> => {
      unregisterLive(live);
      await deleteNetns(name);
    },
    destroySync: (): void => {
      unregisterLive(live);
      execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' });
    },
  };
  registerLive(live);
  await createNetns(name);
  t.teardown(() => live.destroy());
  const run = async (cmd: string, ...args: string[]): Promise<string> => String((await execa('ip', ['netns', 'exec', name, cmd, ...args])).stdout);
  await setup?.(run);
  const ns = Netns.open(netnsPath(name));
  t.teardown(() => ns.close());
  return { name, ns, run };
}
