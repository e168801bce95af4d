// ava glue for netns tests: root gating (skip, or fail under AMBIENT_REQUIRE_ROOT=1) and withTestbed(),
// which registers teardown right after creation. Imports ava, so only test files may import this module.
import test, { type ExecutionContext } from 'ava';
import { Testbed, type TestbedOptions } from './testbed.js';

/** Why netns tests cannot run here, or undefined when they can. */
export const NETNS_UNAVAILABLE: string | undefined =
  process.platform !== 'linux' ? 'needs Linux' : process.getuid?.() !== 0 ? 'needs root (CAP_NET_ADMIN)' : undefined;

type Impl = (t: ExecutionContext) => Promise<void> | void;

/**
 * Declare a test that needs root and network namespaces. Without root it is skipped, unless
 * AMBIENT_REQUIRE_ROOT=1, where it fails instead (CI must never pass silently).
 */
export function netnsTest(title: string, impl: Impl): void {
  declare(test, title, impl);
}

/** Same as netnsTest, but serial. */
netnsTest.serial = (title: string, impl: Impl): void => {
  declare(test.serial, title, impl);
};

function declare(fn: (title: string, impl: Impl) => void, title: string, impl: Impl): void {
  if (NETNS_UNAVAILABLE === undefined) {
    fn(title, impl);
  } else if (process.env.AMBIENT_REQUIRE_ROOT === '1') {
    fn(title, (t) => {
      t.fail(`${NETNS_UNAVAILABLE} and AMBIENT_REQUIRE_ROOT=1`);
    });
  } else {
    test.skip(title, impl);
  }
}

/**
 * Testbed.create(opts) with `t.teardown(() => tb.destroy())` registered straight away. On a failed test
 * the tail of every agent's log goes to t.log first.
 */
export async function withTestbed(t: ExecutionContext, opts: TestbedOptions): Promise<Testbed> {
  const tb = await Testbed.create(opts);
  t.teardown(async () => {
    if (!t.passed) {
      for (const node of tb.nodes) {
        if (node.agent !== undefined) t.log(`--- ${node.name} agent log tail ---\n${await node.agent.logTail(30)}`);
      }
      t.log(`testbed ${tb.id}: ${tb.keep ? `run dir kept at ${tb.runDir}` : 'run dir removed; set AMBIENT_KEEP_TESTBED=1 to keep it'}`);
    }
    await tb.destroy();
  });
  return tb;
}
