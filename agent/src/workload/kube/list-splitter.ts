// Splits a Kubernetes list body (`{"kind":...,"metadata":{...},"items":[{...},{...}]}`) into its items as the text
// arrives, so a list of 50,000 pods is never one parsed tree in memory: each item is parsed and converted on its own. Pure.

/**
 * Feed it the body's text in chunks; each `push` returns the texts of the items completed so far. `rest()` is the body
 * without the items' elements (`"items":[]`), to parse for the list's metadata. Only objects and arrays are items (a
 * list never holds anything else; other values in `items` are dropped). The text must be JSON: anything else surfaces
 * when the caller parses an item or the rest.
 */
export class JsonListSplitter {
  private depth = 0;
  private inString = false;
  private escaped = false;
  /** Inside the top-level `items` array. */
  private inItems = false;
  /** Inside one element of it. */
  private inItem = false;
  private outer = '';
  private item = '';

  push(text: string): string[] {
    const done: string[] = [];
    let start = 0; // where the not yet kept part of `text` begins
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === 0x5c) this.escaped = true; // backslash
        else if (c === 0x22) this.inString = false; // quote
        continue;
      }
      if (c === 0x22) {
        this.inString = true;
      } else if (c === 0x7b || c === 0x5b) { // { [
        if (this.inItems && !this.inItem && this.depth === 2) {
          start = i; // an element begins: what came before it (a comma, spaces) is dropped
          this.inItem = true;
        } else if (c === 0x5b && this.depth === 1 && !this.inItems && /"items"\s*:\s*$/.test(this.outer + text.slice(start, i))) {
          this.outer += text.slice(start, i + 1);
          start = i + 1;
          this.inItems = true;
        }
        this.depth++;
      } else if (c === 0x7d || c === 0x5d) { // } ]
        this.depth--;
        if (this.inItem && this.depth === 2) {
          done.push(this.item + text.slice(start, i + 1));
          this.item = '';
          start = i + 1;
          this.inItem = false;
        } else if (this.inItems && this.depth === 1) {
          start = i; // the array's `]` is kept: the rest reads `"items":[]`
          this.inItems = false;
        }
      }
    }
    if (this.inItem) this.item += text.slice(start);
    else if (!this.inItems) this.outer += text.slice(start);
    return done;
  }

  /** The body without the items' elements. */
  rest(): string {
    return this.outer;
  }
}
