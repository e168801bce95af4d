// The agent's root pino logger: JSON lines on stderr, level adjustable at runtime.
// Modules take children of it (component, pod, conn) instead of creating their own.
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export { LOG_LEVELS, isLogLevel } from './log-levels.js';

/** Children of each root logger, weakly held: pino copies the level into a child when it is made, so a change must reach them. */
const families = new WeakMap<Logger, Set<WeakRef<Logger>>>();

export function createRootLogger(level: LevelWithSilent = 'info', name = 'ambient-node'): Logger {
  const children = new Set<WeakRef<Logger>>();
  const gone = new FinalizationRegistry<WeakRef<Logger>>((ref) => children.delete(ref));
  const root = pino({
    name, level, base: { pid: process.pid },
    onChild: (child) => {
      const ref = new WeakRef(child);
      children.add(ref);
      gone.register(child, ref);
    },
  }, pino.destination({ fd: 2, sync: true }));
  families.set(root, children);
  return root;
}

/** Sets the level of a root logger and of every live child made from it. */
export function setLogLevel(root: Logger, level: LevelWithSilent): void {
  root.level = level;
  for (const ref of families.get(root) ?? []) {
    const child = ref.deref();
    if (child) child.level = level;
  }
}
