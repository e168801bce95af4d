// Pure: splits a text stream into lines with a bound on each line, linear in the characters pushed. Used for the native
// relay's event socket (an over-long line is skipped and reported) and Kubernetes watch streams (it stops the stream).
/**
 * Splits a byte stream into lines, keeping the partial last line for the next chunk. Linear: each chunk is scanned
 * once from where the previous one ended and a line is joined once, when its newline arrives. A line longer than
 * `maxLine` is never buffered. With `overlong: 'skip'` it is skipped up to its newline and reported to `onDrop` (its
 * length and first 200 characters); with `'stop'` the splitter stops where the bound is passed: push() returns the
 * lines before it, `stopped` turns true and later pushes return nothing (a stream that must not lose a line, such as a
 * watch, fails instead). Empty lines are dropped. Pure apart from its buffer.
 */
export class LineSplitter {
  private parts: string[] = [];
  private partLen = 0;
  /** Length of the over-long line being skipped, or -1. */
  private skipping = -1;
  private skippedHead = '';
  /** Over-long lines dropped so far. */
  dropped = 0;
  /** In 'stop' mode: a line passed the bound, and nothing more is split. */
  stopped = false;

  constructor(
    private readonly maxLine: number,
    private readonly onDrop?: (length: number, head: string) => void,
    private readonly overlong: 'skip' | 'stop' = 'skip',
  ) {}

  push(chunk: string): string[] {
    const out: string[] = [];
    if (this.stopped) return out;
    let start = 0;
    for (let nl = chunk.indexOf('\n'); nl >= 0; nl = chunk.indexOf('\n', start)) {
      const piece = nl > start ? chunk.slice(start, nl) : '';
      if (this.skipping < 0 && this.partLen + piece.length > this.maxLine) {
        if (this.stop()) return out;
        this.startSkip(piece);
      }
      else if (this.skipping >= 0) this.skipping += piece.length;
      if (this.skipping >= 0) {
        this.dropped++;
        this.onDrop?.(this.skipping, this.skippedHead);
        this.skipping = -1;
        this.skippedHead = '';
      } else {
        const line = this.partLen ? this.parts.join('') + piece : piece;
        if (line.length) out.push(line);
      }
      this.parts = [];
      this.partLen = 0;
      start = nl + 1;
    }
    if (start < chunk.length) {
      const tail = start ? chunk.slice(start) : chunk;
      if (this.skipping >= 0) this.skipping += tail.length;
      else if (this.partLen + tail.length > this.maxLine) {
        if (this.stop()) return out;
        this.startSkip(tail);
      } else {
        this.parts.push(tail);
        this.partLen += tail.length;
      }
    }
    return out;
  }

  /** Characters held for the line not yet complete (bounded by maxLine). */
  get buffered(): number {
    return this.partLen;
  }

  /** In 'stop' mode, stops for good (true); in 'skip' mode, false. */
  private stop(): boolean {
    if (this.overlong !== 'stop') return false;
    this.stopped = true;
    this.parts = [];
    this.partLen = 0;
    return true;
  }

  private startSkip(piece: string): void {
    this.skippedHead = (this.parts.join('') + piece.slice(0, 200)).slice(0, 200);
    this.skipping = this.partLen + piece.length;
    this.parts = [];
    this.partLen = 0;
  }
}
