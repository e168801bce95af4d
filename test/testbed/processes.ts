// Commands the testbed runs inside its namespaces, tracked by PID so teardown can stop exactly them.
// Long-running ones get their own process group (detached) and are signalled as a group (-pid), never by name.
import { execa, type Options, type ResultPromise } from 'execa';
import { setTimeout as sleep } from 'node:timers/promises';
import { signalGroup } from './agent-process.js';

interface Tracked {
  pid: number;
  detached: boolean;
  settled: Promise<void>;
}

export class ProcessTracker {
  readonly #live = new Map<number, Tracked>();

  /** Run `cmd args` inside named netns `netns` via `ip netns exec`, tracked until it ends. */
  runInNetns<O extends Options = {}>(
    netns: string,
    cmd: string,
    args: readonly string[],
    opts: O | undefined,
    detached: boolean,
  ): ResultPromise<{} & O> {
    const merged = { ...opts, detached } as O;
    const sub = execa<O>('ip', ['netns', 'exec', netns, cmd, ...args], merged);
    const pid = sub.pid;
    if (pid !== undefined) {
      // Our handler also keeps an un-awaited, killed server from becoming an unhandled rejection.
      const settled = sub.then(
        () => undefined,
        () => undefined,
      );
      this.#live.set(pid, { pid, detached, settled });
      void settled.then(() => this.#live.delete(pid));
    }
    return sub;
  }

  get pids(): number[] {
    return [...this.#live.keys()];
  }

  /** SIGTERM everything still running, SIGKILL what is left after `graceMs`, wait for all to end. */
  async stopAll(graceMs = 2000): Promise<void> {
    const all = [...this.#live.values()];
    for (const p of all) this.#signal(p, 'SIGTERM');
    const done = Promise.all(all.map((p) => p.settled));
    const timedOut = await Promise.race([done.then(() => false), sleep(graceMs).then(() => true)]);
    if (timedOut) {
      for (const p of all) this.#signal(p, 'SIGKILL');
      await Promise.race([done, sleep(graceMs)]);
    }
  }

  /** SIGKILL everything without waiting (exit hook). */
  killAllSync(): void {
    for (const p of this.#live.values()) this.#signal(p, 'SIGKILL');
  }

  #signal(p: Tracked, signal: NodeJS.Signals): void {
    if (p.detached) {
      signalGroup(p.pid, signal);
      return;
    }
    try {
      process.kill(p.pid, signal);
    } catch {
      // already gone
    }
  }
}
