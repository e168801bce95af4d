// The identity subsystem's error family: one base class, a stable code per condition, messages that name a likely cause.
// Callers branch on the class (instanceof) or the code, never on message text; wraps always keep the cause.

export type IdentityErrorCode =
  | 'AMB_ERR_SPIFFE_ID'
  | 'AMB_ERR_CA_UNAVAILABLE'
  | 'AMB_ERR_CA_REJECTED'
  | 'AMB_ERR_CA_BAD_RESPONSE'
  | 'AMB_ERR_CA_CONFIG'
  | 'AMB_ERR_NO_VALID_CERT'
  | 'AMB_ERR_IDENTITY_DROPPED';

export abstract class IdentityError extends Error {
  abstract readonly code: IdentityErrorCode;
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super(msg, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = new.target.name;
  }
}

/** A string that is not `spiffe://<td>/ns/<ns>/sa/<sa>`, or one from another trust domain than expected. */
export class InvalidSpiffeIdError extends IdentityError {
  readonly code = 'AMB_ERR_SPIFFE_ID' as const;
  constructor(readonly input: string, reason: string) {
    super(`invalid SPIFFE identity ${JSON.stringify(input)}: ${reason}`);
  }
}

/** The CA could not be reached or did not answer in time (network, TLS, deadline, server-side failure). */
export class CaUnavailableError extends IdentityError {
  readonly code = 'AMB_ERR_CA_UNAVAILABLE' as const;
}

/** The CA answered and refused: authentication, authorisation, or a CSR it will not sign. */
export class CaRejectedError extends IdentityError {
  readonly code = 'AMB_ERR_CA_REJECTED' as const;
}

/** The CA answered with something unusable: no chain, unparsable PEM, a leaf for another identity or key. */
export class CaBadResponseError extends IdentityError {
  readonly code = 'AMB_ERR_CA_BAD_RESPONSE' as const;
}

/** Local CA configuration cannot be used: unreadable token or root file, a root key that does not match its cert. */
export class CaConfigError extends IdentityError {
  readonly code = 'AMB_ERR_CA_CONFIG' as const;
}

/** No certificate for this identity is valid now and the CA could not issue one; carries the last CA error as cause. */
export class NoValidCertError extends IdentityError {
  readonly code = 'AMB_ERR_NO_VALID_CERT' as const;
  constructor(readonly identity: string, lastError: unknown) {
    const why = lastError instanceof Error ? `${lastError.message}` : 'not issued yet';
    super(`no valid certificate for ${identity}: ${why} (the CA is retried with backoff; see the certs command)`, { cause: lastError });
  }
}

/** The identity was dropped (no pod on this node any more, or the provider stopped) while a caller waited for it. */
export class IdentityDroppedError extends IdentityError {
  readonly code = 'AMB_ERR_IDENTITY_DROPPED' as const;
  constructor(readonly identity: string, why: 'retain' | 'stop') {
    super(why === 'stop'
      ? `certificate provider stopped while ${identity} was being issued`
      : `${identity} was dropped (no pod with this identity on the node) while it was being issued`);
  }
}
