// LineSplitter, the framing of the native library's event stream: linear in the bytes pushed, and bounded per line.
import test from 'ava';
import { MAX_EVENT_LINE } from '../../agent/src/hbone/native-lib.js';
import { LineSplitter } from '../../agent/src/protocol/line-splitter.js';

test('lines split anywhere across chunks come out whole and in order', (t) => {
  const lines = ['{"a":1}', '{"bb":22}', '', '{"c":"x\\ny"}', 'z'];
  const text = lines.join('\n') + '\n';
  for (let size = 1; size <= text.length; size++) {
    const s = new LineSplitter(MAX_EVENT_LINE);
    const out: string[] = [];
    for (let i = 0; i < text.length; i += size) out.push(...s.push(text.slice(i, i + size)));
    t.deepEqual(out, lines.filter((l) => l.length > 0), `chunks of ${size}`);
    t.is(s.buffered, 0);
  }
});

test('a partial last line waits for its newline', (t) => {
  const s = new LineSplitter(MAX_EVENT_LINE);
  t.deepEqual(s.push('{"a":1}\n{"b"'), ['{"a":1}']);
  t.is(s.buffered, 4);
  t.deepEqual(s.push(':2}'), []);
  t.deepEqual(s.push('\n'), ['{"b":2}']);
  t.deepEqual(s.push(''), []);
});

test('a line longer than the bound is dropped and reported, never buffered; the next lines still come', (t) => {
  const drops: Array<[number, string]> = [];
  const s = new LineSplitter(100, (length, head) => drops.push([length, head]));
  t.deepEqual(s.push('ok1\n' + 'x'.repeat(60)), ['ok1']);
  t.deepEqual(s.push('y'.repeat(60)), []);
  t.is(s.buffered, 0, 'nothing held once the line is known to be too long');
  t.deepEqual(s.push('z'.repeat(1000)), []);
  t.is(s.buffered, 0);
  t.deepEqual(s.push('zz\nok2\n'), ['ok2']);
  t.is(s.dropped, 1);
  t.deepEqual(drops.map(([l]) => l), [60 + 60 + 1000 + 2]);
  t.is(drops[0]?.[1], 'x'.repeat(60) + 'y'.repeat(60), 'the report carries the start of the line');
  // Exactly at the bound is fine; one more is not.
  t.deepEqual(s.push('a'.repeat(100) + '\n'), ['a'.repeat(100)]);
  t.deepEqual(s.push('b'.repeat(101) + '\n'), []);
  t.is(s.dropped, 2);
});

test('a 28 MB line in 64 KiB chunks costs linear time and bounded memory (the header bomb of issue 11)', (t) => {
  const s = new LineSplitter(MAX_EVENT_LINE);
  const chunk = 'h'.repeat(64 * 1024);
  const started = performance.now();
  for (let i = 0; i < 28 * 16; i++) s.push(chunk);
  t.true(s.buffered <= MAX_EVENT_LINE);
  t.deepEqual(s.push('\n{"ev":"closed"}\n'), ['{"ev":"closed"}']);
  const ms = performance.now() - started;
  t.log(`28 MiB pushed in ${ms.toFixed(1)} ms`);
  t.true(ms < 2000, `took ${ms} ms`);
  t.is(s.dropped, 1);
  // Many small complete lines in one chunk: one pass.
  const many = '{"ev":"status"}\n'.repeat(100_000);
  const t0 = performance.now();
  t.is(s.push(many).length, 100_000);
  t.true(performance.now() - t0 < 2000);
});
