// A netns spawner thread (spawn.ts starts up to two): enters a pod's network namespace, starts a child there with a blocking
// posix_spawn (only this thread waits for the exec) and goes back to the agent's namespace, one request at a time.
import { parentPort } from 'node:worker_threads';
import { CLONE_NEWNET, setns, spawnCalls } from './libc.js';
import { checkRc, spawnAttributes, type NetnsSpawnAnswer, type NetnsSpawnMessage } from './spawn.js';

if (!parentPort) throw new Error('netns-spawn-worker.ts runs as spawn.ts\'s worker thread only');
const port = parentPort;

/**
 * Every request enters its namespace first, so what a request runs in never depends on an earlier one; the way back
 * still matters (nothing else may ever run here in a pod's namespace): when it fails, the thread ends (spawn.ts fails
 * what is waiting and starts a new thread for the next spawn).
 */
port.on('message', (m: NetnsSpawnMessage) => {
  let answer: NetnsSpawnAnswer = { id: m.id, error: 'not started' };
  try {
    setns(m.netnsFd, CLONE_NEWNET);
  } catch (err) {
    port.postMessage({ id: m.id, error: `entering the namespace: ${(err as Error).message}` } satisfies NetnsSpawnAnswer);
    return;
  }
  try {
    answer = { id: m.id, pid: spawnNow(m) };
  } catch (err) {
    answer = { id: m.id, error: (err as Error).message };
  } finally {
    try {
      setns(m.homeFd, CLONE_NEWNET);
    } catch {
      port.postMessage(answer); // the child (if any) is started: its caller reaps it
      process.exit(1); // a worker thread's exit: this thread only
    }
  }
  port.postMessage(answer);
});

/** posix_spawn, blocking this thread until the child has exec'd; the child starts in this thread's namespace. */
function spawnNow(m: NetnsSpawnMessage): number {
  const { fa, attr, free } = spawnAttributes(m.stdio);
  try {
    const out = [0];
    checkRc(`posix_spawn ${m.path}`, spawnCalls.posixSpawn(out, m.path, fa, attr, [...m.argv, null], [...m.envp, null]) as number);
    return out[0] as number;
  } finally {
    free();
  }
}
