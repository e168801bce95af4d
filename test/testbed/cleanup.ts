// Process-wide safety net: every live testbed is destroyed on SIGINT/SIGTERM/SIGHUP (async, then the
// signal's default action) and, synchronously and best-effort, on process exit. Nothing here matches by name.

/** What the registry needs from a testbed. */
export interface Destroyable {
  destroy(): Promise<void>;
  /** Synchronous last resort (exit hook): SIGKILL processes, delete netns, remove the run dir. */
  destroySync(): void;
}

const live = new Set<Destroyable>();
let installed = false;
let signalled = false;

const SIGNALS: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

export function registerLive(tb: Destroyable): void {
  live.add(tb);
  install();
}

export function unregisterLive(tb: Destroyable): void {
  live.delete(tb);
}

function destroyAllSync(): void {
  for (const tb of [...live]) {
    live.delete(tb);
    try {
      tb.destroySync();
    } catch {
      // nothing more can be done while exiting
    }
  }
}

function onSignal(signal: NodeJS.Signals): void {
  if (signalled) {
    // Second signal while cleaning up: finish synchronously and go.
    destroyAllSync();
    process.exit(128 + signalNumber(signal));
  }
  signalled = true;
  void Promise.allSettled([...live].map((tb) => tb.destroy())).then(() => {
    for (const s of SIGNALS) process.removeListener(s, onSignal);
    // If nobody else handles this signal, die of it as we would have without us.
    if (process.listenerCount(signal) === 0) process.kill(process.pid, signal);
  });
}

function signalNumber(signal: NodeJS.Signals): number {
  return signal === 'SIGINT' ? 2 : signal === 'SIGTERM' ? 15 : signal === 'SIGHUP' ? 1 : 0;
}

function install(): void {
  if (installed) return;
  installed = true;
  process.on('exit', destroyAllSync);
  for (const s of SIGNALS) process.on(s, onSignal);
}
