// KeyedMutex: work on one key runs in order, different keys in parallel, and idle() waits for all of it (a take-over's
// freeze relies on that before it lets go of the state dir).
import test from 'ava';
import { KeyedMutex } from '../../agent/src/registry/keyed-mutex.js';

const tick = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('idle() resolves at once when nothing runs', async (t) => {
  await new KeyedMutex().idle();
  t.pass();
});

test('idle() waits for running work, work queued behind it and work queued while it waits, failures included', async (t) => {
  const m = new KeyedMutex();
  const done: string[] = [];
  void m.run('a', async () => {
    await tick(30);
    done.push('a1');
    // Queued from inside running work, as reevaluate() queues after a change: idle() must wait for it too.
    void m.run('b', async () => {
      await tick(10);
      done.push('b1');
    });
  });
  void m.run('a', async () => {
    done.push('a2');
    throw new Error('fails');
  }).catch(() => undefined);
  await m.idle();
  t.deepEqual(done, ['a1', 'a2', 'b1']);
});
