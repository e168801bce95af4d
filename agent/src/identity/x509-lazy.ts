// Loads x509-util.ts (@peculiar/x509, reflect-metadata, tsyringe, asn1js: ~200 ms of module loading) on first use, once:
// a start needs none of it (pki-node.ts opens the root); the first CSR or signature waits for it, or Agent.start preloads it.
export type X509Util = typeof import('./x509-util.js');

let loading: Promise<X509Util> | undefined;

export function x509Util(): Promise<X509Util> {
  // A failed load (e.g. out of descriptors) is not kept: the next certificate tries again.
  return (loading ??= import('./x509-util.js').catch((err: unknown) => {
    loading = undefined;
    throw err;
  }));
}
