// The contract between workload identities and the data path: TLS material for a SPIFFE identity, and the trust roots.
// Implemented by the certificate manager; the forwarder only ever sees this interface.

/** PEM material for one identity: its private key, its chain (leaf first) and the roots that peers must chain to. */
export interface TlsMaterial {
  identity: string;
  keyPem: string;
  /** Leaf first, then intermediates; never the root. */
  chainPem: string;
  /** Every trusted root, concatenated (several when roots rotate or an Istio CA sends several). */
  rootsPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface IdentityProvider {
  readonly trustDomain: string;
  /**
   * Current material for an identity; the first call for an identity starts its issuance and waits for it.
   * Rejects with a clear error when no valid certificate can be had (CA down and nothing still valid).
   */
  material(identity: string): Promise<TlsMaterial>;
  /** Tells the provider which identities have pods on this node; certificates of the others are dropped. */
  retain(identities: ReadonlySet<string>): void;
  /** Called with the identity after its certificate was renewed (new handshakes should use the new one). Returns an unsubscribe. */
  onRenewed(listener: (identity: string) => void): () => void;
  stop(): Promise<void>;
}
