// A controllable CertificateAuthority for tests: wraps a real CA and can fail, hold requests, and count them.
// Shipped as a real export so the forwarder's and agent's tests can simulate CA outages without a network.
import type { CertificateAuthority, SignRequest, SignResult } from './ca.js';
import { BuiltinCa } from './builtin-ca.js';
import { CaUnavailableError } from './errors.js';

export class FakeCa<C extends CertificateAuthority = CertificateAuthority> implements CertificateAuthority {
  /** Every request received, in order. */
  readonly requests: SignRequest[] = [];
  /** When set, every call fails with this error (after any hold). */
  failWith: Error | undefined;
  /** Requests currently inside sign(), and the most there ever were at once. */
  inflight = 0;
  maxInflight = 0;
  #held = false;
  #gate: Array<() => void> = [];

  constructor(readonly inner: C) {}

  /** A fake over an in-memory BuiltinCa for the trust domain. */
  static async create(trustDomain: string, opts: { now?: () => number } = {}): Promise<FakeCa<BuiltinCa>> {
    return new FakeCa(await BuiltinCa.ephemeral({ trustDomain, ...opts }));
  }

  /** Makes the CA unreachable: calls reject with CaUnavailableError until `up()`. */
  down(message = 'fake CA is down'): void {
    this.failWith = new CaUnavailableError(message);
  }

  up(): void {
    this.failWith = undefined;
  }

  /** Calls from now on wait inside sign() until `release()`. */
  hold(): void {
    this.#held = true;
  }

  /** Lets held calls (and later ones) through. */
  release(): void {
    this.#held = false;
    for (const go of this.#gate.splice(0)) go();
  }

  /** How many calls are waiting at the gate. */
  get waiting(): number {
    return this.#gate.length;
  }

  async sign(req: SignRequest): Promise<SignResult> {
    this.requests.push(req);
    this.inflight++;
    this.maxInflight = Math.max(this.maxInflight, this.inflight);
    try {
      if (this.#held) await new Promise<void>((resolve) => this.#gate.push(resolve));
      if (this.failWith) throw this.failWith;
      return await this.inner.sign(req);
    } finally {
      this.inflight--;
    }
  }
}
