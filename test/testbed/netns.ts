// Named network namespaces for the testbed: create, delete by exact name, list, run a command inside.
// Only `ip netns` and `ip -n` are used, so nothing is configured in the caller's (root) namespace.
import { execa, type Options, type ResultPromise } from 'execa';

/** Path of the bind mount `ip netns add` creates for a namespace. */
export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

/** `ip netns add <name>` then bring `lo` up inside it. */
export async function createNetns(name: string): Promise<void> {
  await execa('ip', ['netns', 'add', name]);
  await execa('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
}

/** `ip netns del <name>`; a namespace that is already gone is not an error. */
export async function deleteNetns(name: string): Promise<void> {
  const r = await execa('ip', ['netns', 'del', name], { reject: false });
  if (r.exitCode !== 0 && !/No such file|not found/i.test(String(r.stderr))) {
    throw new Error(`ip netns del ${name} failed: ${String(r.stderr).trim()}`);
  }
}

/** Names of all named network namespaces on the machine. */
export async function listNetns(): Promise<string[]> {
  const r = await execa('ip', ['netns', 'list']);
  return String(r.stdout)
    .split('\n')
    .map((line) => line.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n !== '');
}

/** Run `cmd args` inside netns `name` (`ip netns exec`, which also remounts /sys for that netns). */
export function execInNetns<O extends Options = {}>(
  name: string,
  cmd: string,
  args: readonly string[] = [],
  opts?: O,
): ResultPromise<{} & O> {
  return execa<O>('ip', ['netns', 'exec', name, cmd, ...args], opts);
}

/** `ip -n <name> <args...>`: iproute2 configuration of a namespace without entering it. */
export async function ipIn(name: string, ...args: string[]): Promise<string> {
  const r = await execa('ip', ['-n', name, ...args]);
  return String(r.stdout);
}
