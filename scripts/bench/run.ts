// Benchmark run state shared by every step: the interrupt flag (set by the entry's signal listeners), progress lines
// on stderr, and testbed lifetime (every testbed created is destroyed, and its id kept for the final leak check).
import { Testbed, type TestbedOptions } from '../../test/testbed/index.js';

export class Interrupted extends Error {
  constructor(readonly signal: NodeJS.Signals) {
    super(`interrupted by ${signal}`);
  }
}

let interruptedBy: NodeJS.Signals | undefined;

/** Record the first interrupting signal; from then on every checkInterrupted() throws. */
export function noteInterrupt(signal: NodeJS.Signals): void {
  interruptedBy ??= signal;
}

export function wasInterrupted(): boolean {
  return interruptedBy !== undefined;
}

/** Called before each step that creates something, so that an interrupted run stops creating testbeds and pods. */
export function checkInterrupted(): void {
  if (interruptedBy !== undefined) throw new Interrupted(interruptedBy);
}

/** The word after `name` in a single script's argv (`--pods 60`), else `dflt`. */
export function argValue(args: readonly string[], name: string, dflt: string): string {
  const i = args.indexOf(name);
  return i >= 0 ? (args[i + 1] ?? dflt) : dflt;
}

export function progress(msg: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

/** Namespace labels that enrol a namespace's pods. */
export const AMBIENT = { 'istio.io/dataplane-mode': 'ambient' };

/** Ids of every testbed this run created, for the final check that none left a netns behind. */
export const createdIds: string[] = [];

/** Create the testbeds in order, run fn, and always destroy every one that was created. */
export async function withTestbeds<T>(optsList: TestbedOptions[], fn: (tbs: Testbed[]) => Promise<T>): Promise<T> {
  const tbs: Testbed[] = [];
  try {
    for (const o of optsList) {
      checkInterrupted();
      const tb = await Testbed.create(o);
      createdIds.push(tb.id);
      tbs.push(tb);
    }
    return await fn(tbs);
  } finally {
    const t0 = performance.now();
    const results = await Promise.allSettled(tbs.map((tb) => tb.destroy()));
    for (const r of results) {
      if (r.status === 'rejected') process.stderr.write(`bench: teardown problem: ${String(r.reason)}\n`);
    }
    if (tbs.length > 0) progress(`destroyed ${tbs.length} testbed(s) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
}
