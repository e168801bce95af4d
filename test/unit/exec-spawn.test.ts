// runTool through posix_spawn (platform/spawn.ts): exit codes, stderr in the error, stdin, timeout kill, output bound,
// the child's descriptors and signal state. Needs only sh and coreutils, no root.
import test from 'ava';
import { MAX_TOOL_OUTPUT, runChild, ToolError, runTool } from '../../agent/src/platform/exec.js';

test('returns stdout and feeds the input on stdin', async (t) => {
  t.is(await runTool('sh', ['-c', 'cat; echo done'], { input: 'hello\n' }), 'hello\ndone\n');
});

test('a non-zero exit throws ToolError with the exit code and stderr', async (t) => {
  const err = await t.throwsAsync(runTool('sh', ['-c', 'echo out; echo broken rule >&2; exit 3']), { instanceOf: ToolError });
  t.is(err?.exitCode, 3);
  t.regex(err?.message ?? '', /exit 3.*broken rule/);
  t.is(err?.stderr.trim(), 'broken rule');
});

test('a tool killed by a signal is a failure', async (t) => {
  const err = await t.throwsAsync(runTool('sh', ['-c', 'kill -TERM $$']), { instanceOf: ToolError });
  t.regex(err?.message ?? '', /killed by signal 15/);
});

test('the timeout kills the tool and says so, even when a grandchild holds its pipes', async (t) => {
  const err = await t.throwsAsync(runTool('sh', ['-c', 'sleep 3 & sleep 60'], { timeoutMs: 200 }), { instanceOf: ToolError });
  t.regex(err?.message ?? '', /timed out after 200 ms/);
});

test('output past the bound kills the tool with a clear error', async (t) => {
  const err = await t.throwsAsync(runTool('head', ['-c', String(MAX_TOOL_OUTPUT + 1024), '/dev/zero']), { instanceOf: ToolError });
  t.regex(err?.message ?? '', /stdout exceeded 16777216 bytes/);
});

test('output up to the bound is returned whole', async (t) => {
  t.is((await runTool('head', ['-c', String(4 * 1024 * 1024), '/dev/zero'])).length, 4 * 1024 * 1024);
});

test('the child sees only fds 0-2 of the agent', async (t) => {
  const fds = await runTool('sh', ['-c', 'ls /proc/$$/fd']);
  t.deepEqual(fds.trim().split(/\s+/).sort(), ['0', '1', '2']);
});

test('the child gets SIGPIPE at its default action and an empty signal mask', async (t) => {
  // With SIGPIPE ignored (Node's own setting) `yes` would loop on EPIPE errors instead of dying.
  t.is(await runTool('sh', ['-c', 'yes | head -1'], { timeoutMs: 10_000 }), 'y\n');
  // The tool's own status (grep reading /proc/self), not a shell's: dash blocks every signal around each fork, so a
  // shell's status read by its child shows a full mask about a third of the time.
  const status = await runTool('grep', ['-E', '^Sig(Blk|Ign)', '/proc/self/status']);
  t.regex(status, /SigBlk:\s+0+\n/);
  const ignored = BigInt(`0x${/SigIgn:\s+([0-9a-f]+)/.exec(status)?.[1] ?? 'ffff'}`);
  t.is(ignored & (1n << 12n), 0n, `SIGPIPE (13, bit 12) not ignored: ${status}`);
});

test('many tools at once each get their own output', async (t) => {
  const outs = await Promise.all(Array.from({ length: 40 }, (_, i) => runTool('sh', ['-c', `echo ${i}`])));
  t.deepEqual(outs, Array.from({ length: 40 }, (_, i) => `${i}\n`));
});

test('a missing netns path fails as a ToolError naming it, before any tool starts', async (t) => {
  const err = await t.throwsAsync(runTool('true', [], { netns: '/nonexistent/netns' }), { instanceOf: ToolError });
  t.is(err?.exitCode, undefined);
  t.regex(err?.message ?? '', /^true failed: ENOENT.*\/nonexistent\/netns/);
});

test('arguments reach the tool byte for byte (UTF-8); a NUL byte is refused, never truncated', async (t) => {
  t.is(await runTool('sh', ['-c', 'printf "%s|" "$@"', 'sh', 'é ü', '-n', '']), 'é ü|-n||');
  const err = await t.throwsAsync(runTool('sh', ['-c', 'printf "%s|" "$@"', 'sh', 'ab\0cd']), { instanceOf: ToolError });
  t.regex(err?.message ?? '', /NUL byte/);
});

const root = process.getuid?.() === 0;

(root ? test : test.skip)('with netns the tool starts in the namespace the path names (no nsenter before it), and comes back for the next', async (t) => {
  const own = (await runTool('readlink', ['/proc/self/ns/net'])).trim();
  t.is((await runTool('readlink', ['/proc/self/ns/net'], { netns: '/proc/self/ns/net' })).trim(), own);
  const cmdline = await runTool('sh', ['-c', 'tr "\\0" " " < /proc/$PPID/cmdline; echo; tr "\\0" " " < /proc/$$/cmdline'], { netns: '/proc/self/ns/net' });
  t.notRegex(cmdline, /nsenter/, 'the tool itself is the agent\'s child');
  const many = await Promise.all(Array.from({ length: 8 }, () => runTool('readlink', ['/proc/self/ns/net'], { netns: '/proc/self/ns/net' })));
  t.deepEqual(many.map((s) => s.trim()), Array(8).fill(own) as string[]);
});

(root ? test : test.skip)('with netns, a path that names no namespace fails the tool with a clear error', async (t) => {
  const notNs = await t.throwsAsync(runTool('true', [], { netns: '/etc/hostname' }), { instanceOf: ToolError });
  t.regex(notNs?.message ?? '', /entering the namespace: setns/);
  t.is((await runTool('sh', ['-c', 'echo still fine'], { netns: '/proc/self/ns/net' })).trim(), 'still fine', 'the spawner carries on');
});

test('runChild: a non-zero exit and a signal are outcomes, not errors; the environment is exactly the one given', async (t) => {
  const sh = '/bin/sh';
  const r = await runChild(sh, [sh, '-c', 'echo "$ONLY" "${HOME-unset}"; cat >&2; exit 4'], { ONLY: 'x' }, { input: 'in' });
  t.deepEqual({ stdout: r.stdout, stderr: r.stderr, exit: r.exit, cut: r.cut }, { stdout: 'x unset\n', stderr: 'in', exit: { code: 4, signal: undefined }, cut: undefined });
  const k = await runChild(sh, [sh, '-c', 'kill -KILL $$'], {});
  t.deepEqual(k.exit, { code: undefined, signal: 9 });
});

test('runChild: cut short by its own bound on output, or by the timeout, and says which', async (t) => {
  const out = await runChild('/usr/bin/head', ['head', '-c', '70000', '/dev/zero'], {}, { maxOutput: 65536 });
  t.is(out.cutBy, 'output');
  t.regex(out.cut ?? '', /stdout exceeded 65536 bytes/);
  const slow = await runChild('/bin/sh', ['sh', '-c', 'sleep 60'], {}, { timeoutMs: 100 });
  t.is(slow.cutBy, 'timeout');
  t.is(slow.exit.signal, 9);
});

test('runChild: a file that cannot be started throws', async (t) => {
  await t.throwsAsync(runChild('/nonexistent/tool', ['tool'], {}));
});
