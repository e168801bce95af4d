// Shared copies of the strings and label maps that repeat across a cluster's pods (namespace, node, service account,
// identity, label sets), so the workload directory holds one copy of each instead of one per pod. Bounded: a full pool starts over.

/** A pool of equal values: `get` returns the first copy seen. Cleared when it holds `max` (later copies are pooled again). */
export class InternPool<K, V> {
  private readonly pool = new Map<K, V>();

  constructor(private readonly max: number) {}

  get size(): number {
    return this.pool.size;
  }

  /** The pooled value for `key`, made with `make` the first time. */
  get(key: K, make: () => V): V {
    const cur = this.pool.get(key);
    if (cur !== undefined) return cur;
    // Label values churn (a new pod-template-hash per rollout): starting over bounds the pool; at worst a few copies.
    if (this.pool.size >= this.max) this.pool.clear();
    const v = make();
    this.pool.set(key, v);
    return v;
  }
}

const strings = new InternPool<string, string>(200_000);

/** The shared copy of a string that many pods carry (namespace, node, service account, label key or value). */
export function intern(s: string): string {
  return strings.get(s, () => flat(s));
}

/**
 * `s` in one piece. A parser may build a value by concatenation (the YAML one does): V8 then keeps it as a tree of the
 * pieces (about 24 small strings a pod) until something reads it whole; a string kept for long is made whole first.
 * Converting to a number reads it whole and flattens it in place.
 */
export function flat(s: string): string {
  void Number(s);
  return s;
}

const EMPTY: Readonly<Record<string, string>> = Object.freeze({});
const labelSets = new InternPool<string, Readonly<Record<string, string>>>(50_000);

/**
 * The shared, frozen copy of a string map (labels, the kept annotations): the pods of one ReplicaSet carry the same
 * labels, so a cluster has far fewer label sets than pods. Keys keep their order.
 */
export function internMap(m: Readonly<Record<string, string>>): Readonly<Record<string, string>> {
  const keys = Object.keys(m);
  if (keys.length === 0) return EMPTY;
  let sig = '';
  for (const k of keys) sig += `${k}\u0000${m[k] as string}\u0000`;
  return labelSets.get(sig, () => {
    const out: Record<string, string> = {};
    for (const k of keys) out[intern(k)] = intern(m[k] as string);
    return Object.freeze(out);
  });
}
