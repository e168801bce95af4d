// Pure: splits a byte stream (a watch response) into its lines, refusing a line longer than a bound instead of
// buffering it without end. Only the new chunk is searched for a newline, so a long line costs linear time.

/** A line over the bound; the stream cannot be trusted after it. */
export class LineTooLongError extends Error {
  constructor(readonly maxBytes: number) {
    super(`a line is over ${maxBytes} bytes`);
  }
}

export class LineSplitter {
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;

  constructor(private readonly maxBytes: number) {}

  /**
   * The lines `chunk` completes (UTF-8, without the newline), in order; what follows the last newline waits. Lines
   * before an overlong one are yielded before the LineTooLongError. Read each result to its end before the next push.
   */
  *push(chunk: Uint8Array): Generator<string> {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      const tail = chunk.subarray(start, nl);
      this.refuseOver(this.pendingBytes + tail.length);
      this.pending.push(tail);
      const line = Buffer.concat(this.pending).toString('utf8');
      this.pending = [];
      this.pendingBytes = 0;
      start = nl + 1;
      yield line;
    }
    if (start < chunk.length) {
      const rest = chunk.subarray(start);
      this.refuseOver(this.pendingBytes + rest.length);
      this.pending.push(rest);
      this.pendingBytes += rest.length;
    }
  }

  /** Bytes after the last newline (a line the stream has not finished). */
  get buffered(): number {
    return this.pendingBytes;
  }

  private refuseOver(bytes: number): void {
    if (bytes > this.maxBytes) {
      this.pending = [];
      this.pendingBytes = 0;
      throw new LineTooLongError(this.maxBytes);
    }
  }
}
