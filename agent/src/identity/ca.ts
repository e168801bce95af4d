// The certificate authority contract the certificate manager issues through: the built-in CA and Istio's CA implement it.
// A CA signs one CSR for one identity; it keeps no per-identity state and never retries (the manager owns retries).
export {
  CaBadResponseError,
  CaConfigError,
  CaRejectedError,
  CaUnavailableError,
} from './errors.js';

export interface SignRequest {
  /** PEM PKCS#10 request whose only SAN is the URI `identity`. */
  csrPem: string;
  /** The SPIFFE identity the certificate is for (Istio: sent as ImpersonatedIdentity). */
  identity: string;
  /** Requested lifetime; a CA may shorten it. */
  ttlSeconds: number;
}

export interface SignResult {
  /** One PEM certificate per element: the leaf first, then intermediates; never a root. */
  chainPem: string[];
  /** One PEM certificate per element: every root the chain may end in. Never empty. */
  rootsPem: string[];
}

export interface CertificateAuthority {
  /**
   * Signs a CSR. Rejects with CaUnavailableError (unreachable, timed out), CaRejectedError (refused),
   * CaBadResponseError (unusable answer) or CaConfigError (local files); all of them are worth retrying later.
   */
  sign(req: SignRequest): Promise<SignResult>;
  /** Releases connections; the CA is not used afterwards. */
  close?(): void;
}
