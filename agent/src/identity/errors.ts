// The identity subsystem's error family: one base class, a stable code per condition, messages that name a likely cause.
// Callers branch on the class (instanceof) or the code, never on message text; wraps always keep the cause.
import { AmbientError } from '../errors.js';

export type IdentityErrorCode =
  | 'AMB_ERR_SPIFFE_ID'
  | 'AMB_ERR_CA_UNAVAILABLE'
  | 'AMB_ERR_CA_REJECTED'
  | 'AMB_ERR_CA_BAD_RESPONSE'
  | 'AMB_ERR_CA_CONFIG'
  | 'AMB_ERR_NO_VALID_CERT'
  | 'AMB_ERR_IDENTITY_DROPPED';

/** The identity subsystem's part of the AmbientError family (its codes are listed in AMBIENT_ERROR_CODES too). */
export abstract class IdentityError<C extends IdentityErrorCode = IdentityErrorCode> extends AmbientError<C> {}

/** A string that is not `spiffe://<td>/ns/<ns>/sa/<sa>`, or one from another trust domain than expected. */
export class InvalidSpiffeIdError extends IdentityError<'AMB_ERR_SPIFFE_ID'> {
  constructor(readonly input: string, reason: string) {
    super('AMB_ERR_SPIFFE_ID', `invalid SPIFFE identity ${JSON.stringify(input)}: ${reason}`);
  }
}

/** The CA could not be reached or did not answer in time (network, TLS, deadline, server-side failure). */
export class CaUnavailableError extends IdentityError<'AMB_ERR_CA_UNAVAILABLE'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_CA_UNAVAILABLE', msg, opts);
  }
}

/** The CA answered and refused: authentication, authorisation, or a CSR it will not sign. */
export class CaRejectedError extends IdentityError<'AMB_ERR_CA_REJECTED'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_CA_REJECTED', msg, opts);
  }
}

/** The CA answered with something unusable: no chain, unparsable PEM, a leaf for another identity or key. */
export class CaBadResponseError extends IdentityError<'AMB_ERR_CA_BAD_RESPONSE'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_CA_BAD_RESPONSE', msg, opts);
  }
}

/** Local CA configuration cannot be used: unreadable token or root file, a root key that does not match its cert. */
export class CaConfigError extends IdentityError<'AMB_ERR_CA_CONFIG'> {
  constructor(msg: string, opts: { cause?: unknown } = {}) {
    super('AMB_ERR_CA_CONFIG', msg, opts);
  }
}

/** No certificate for this identity is valid now and the CA could not issue one; carries the last CA error as cause. */
export class NoValidCertError extends IdentityError<'AMB_ERR_NO_VALID_CERT'> {
  constructor(readonly identity: string, lastError: unknown) {
    const why = lastError instanceof Error ? `${lastError.message}` : 'not issued yet';
    super('AMB_ERR_NO_VALID_CERT', `no valid certificate for ${identity}: ${why} (the CA is retried with backoff; see the certs command)`, { cause: lastError });
  }
}

/** The identity was dropped (no pod on this node any more, or the provider stopped) while a caller waited for it. */
export class IdentityDroppedError extends IdentityError<'AMB_ERR_IDENTITY_DROPPED'> {
  constructor(readonly identity: string, why: 'retain' | 'stop') {
    super('AMB_ERR_IDENTITY_DROPPED', why === 'stop'
      ? `certificate provider stopped while ${identity} was being issued`
      : `${identity} was dropped (no pod with this identity on the node) while it was being issued`);
  }
}
