// Objects by key, each defined by one or more files of the workloads folder: the one in force is the last definition in
// file-name order. Updated one file's definition at a time, so a change costs what that file holds, not the whole folder.

/** The definition in force for a key, and the file it comes from. */
export interface Held<T> {
  value: T;
  file: string;
}

export class FileUnion<T> {
  private readonly held = new Map<string, Held<T>>();
  /** Keys that more than one file defined at some point (rare): only these need a search when their file drops them. */
  private readonly shared = new Set<string>();

  /** `definedIn(key, file)`: the last definition of key, in file-name order, in any file but `file` (a full search). */
  constructor(private readonly definedIn: (key: string, exceptFile: string) => Held<T> | undefined) {}

  get(key: string): T | undefined {
    return this.held.get(key)?.value;
  }

  values(): T[] {
    return [...this.held.values()].map((h) => h.value);
  }

  get size(): number {
    return this.held.size;
  }

  /** File `file` defines key as value (a later definition in the same file replaces an earlier one). */
  set(key: string, file: string, value: T): void {
    const cur = this.held.get(key);
    if (cur && cur.file !== file) {
      this.shared.add(key);
      if (file < cur.file) return; // a later file's definition stays in force
    }
    this.held.set(key, { value, file });
  }

  /** File `file` no longer defines key: another file's definition (if any) comes into force. */
  remove(key: string, file: string): void {
    const cur = this.held.get(key);
    if (!cur || cur.file !== file) return;
    const other = this.shared.has(key) ? this.definedIn(key, file) : undefined;
    if (other) {
      this.held.set(key, other);
    } else {
      this.held.delete(key);
      this.shared.delete(key);
    }
  }
}
