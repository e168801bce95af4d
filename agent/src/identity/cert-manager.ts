// Keeps one ECDSA P-256 key and certificate per identity with a pod on this node, issued through a CertificateAuthority,
// renewed at half-life with jitter, retried with per-identity backoff; a still-valid certificate is served while the CA is down.
import { pino } from 'pino';
import type { Logger } from '../log.js';
import type { CertificateAuthority } from './ca.js';
import { CaBadResponseError, IdentityDroppedError, InvalidSpiffeIdError, NoValidCertError } from './errors.js';
import type { IdentityProvider, TlsMaterial } from './provider.js';
import { renewalTime, retryTime, type Random } from './rotation.js';
import { checkTrustDomain, parseSpiffeId } from './spiffe.js';
import { x509Util } from './x509-lazy.js';

/** Time and timers, injectable so tests can drive the schedule. `schedule` returns a function that cancels. */
export interface Clock {
  now(): number;
  schedule(fn: () => void, delayMs: number): () => void;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  schedule(fn, delayMs) {
    const t = setTimeout(fn, delayMs);
    t.unref();
    return () => clearTimeout(t);
  },
};

export interface CertManagerOptions {
  ca: CertificateAuthority;
  trustDomain: string;
  /** Requested certificate lifetime. Default 24 h. */
  lifetimeSeconds?: number;
  /** CA requests in flight at once, across identities (ztunnel: 8). */
  maxConcurrentRequests?: number;
  clock?: Clock;
  random?: Random;
  log?: Logger;
}

export type CertState = 'pending' | 'valid' | 'renewing' | 'expired';

/** One row of `snapshot()`, for the `certs` command and the admin server. */
export interface CertStatus {
  identity: string;
  state: CertState;
  serial?: string;
  notBefore?: Date;
  notAfter?: Date;
  /** When the next renewal or retry is due; absent while a request is queued or running. */
  nextRenewal?: Date;
  /** Consecutive CA failures since the last success. */
  failures: number;
  lastError?: string;
}

export interface CertCounters {
  caRequests: number;
  caFailures: number;
  renewals: number;
  identities: number;
}

export const DEFAULT_LIFETIME_SECONDS = 86_400;
export const DEFAULT_MAX_CONCURRENT_REQUESTS = 8;
/** setTimeout fires at once for delays beyond 2^31-1 ms (~24.8 days); longer waits are done in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Waiter {
  resolve(m: TlsMaterial): void;
  reject(err: Error): void;
}

interface Entry {
  readonly identity: string;
  current: TlsMaterial | undefined;
  failures: number;
  lastError: Error | undefined;
  phase: 'idle' | 'queued' | 'running';
  nextAt: number | undefined;
  cancelTimer: (() => void) | undefined;
  waiters: Waiter[];
  dropped: boolean;
}

export class CertManager implements IdentityProvider {
  readonly trustDomain: string;
  readonly #ca: CertificateAuthority;
  readonly #lifetimeSeconds: number;
  readonly #maxConcurrent: number;
  readonly #clock: Clock;
  readonly #random: Random;
  readonly #log: Logger;
  readonly #entries = new Map<string, Entry>();
  /** Requests someone is waiting for (no valid certificate) go before background renewals and prefetches. */
  #urgent: Entry[] = [];
  #background: Entry[] = [];
  #running = 0;
  readonly #inflight = new Set<Promise<void>>();
  readonly #listeners: Array<(identity: string) => void> = [];
  readonly #counters = { caRequests: 0, caFailures: 0, renewals: 0 };
  /** Invalid identities already reported by retain(), so a periodic reconcile does not repeat the warning. */
  readonly #warned = new Set<string>();
  #stopped = false;

  constructor(opts: CertManagerOptions) {
    this.trustDomain = checkTrustDomain(opts.trustDomain);
    this.#ca = opts.ca;
    this.#lifetimeSeconds = opts.lifetimeSeconds ?? DEFAULT_LIFETIME_SECONDS;
    this.#maxConcurrent = Math.max(1, opts.maxConcurrentRequests ?? DEFAULT_MAX_CONCURRENT_REQUESTS);
    this.#clock = opts.clock ?? systemClock;
    this.#random = opts.random ?? Math.random;
    this.#log = opts.log ?? pino({ level: 'silent' });
    if (!(this.#lifetimeSeconds > 0)) throw new RangeError(`certificate lifetime must be positive, got ${this.#lifetimeSeconds}`);
  }

  /**
   * The current material; the first call for an identity starts its issuance and waits for it. With no valid certificate,
   * waits for a request already queued or running, and otherwise (the CA failed and a retry is scheduled) rejects at once
   * with NoValidCertError carrying the last CA error, so connections fail fast instead of hanging for the backoff.
   */
  async material(identity: string): Promise<TlsMaterial> {
    if (this.#stopped) throw new IdentityDroppedError(identity, 'stop');
    const td = parseSpiffeId(identity).trustDomain;
    if (td !== this.trustDomain) throw new InvalidSpiffeIdError(identity, `trust domain ${td} is not this node's ${this.trustDomain}`);
    let e = this.#entries.get(identity);
    if (!e) {
      e = this.#newEntry(identity);
      this.#request(e, true);
    }
    const now = this.#clock.now();
    if (e.current && now < e.current.notAfter.getTime()) return e.current;
    if (e.phase === 'idle') {
      if (e.lastError) throw new NoValidCertError(identity, e.lastError);
      this.#request(e, true);
    } else {
      this.#promote(e);
    }
    const entry = e;
    return new Promise((resolve, reject) => entry.waiters.push({ resolve, reject }));
  }

  /** Drops identities not in the set (timers cancelled, waiters rejected) and starts fetching new ones in the background. */
  retain(identities: ReadonlySet<string>): void {
    if (this.#stopped) return;
    for (const [id, e] of this.#entries) if (!identities.has(id)) this.#drop(e, 'retain');
    for (const id of identities) {
      if (this.#entries.has(id)) continue;
      try {
        if (parseSpiffeId(id).trustDomain !== this.trustDomain) throw new InvalidSpiffeIdError(id, `not in trust domain ${this.trustDomain}`);
      } catch (err) {
        if (!this.#warned.has(id)) this.#log.warn({ identity: id, err }, 'not prefetching certificate for invalid identity');
        this.#warned.add(id);
        continue;
      }
      this.#request(this.#newEntry(id), false);
    }
  }

  /** Listeners run after a certificate replaced an earlier one (not after the first issuance). */
  onRenewed(listener: (identity: string) => void): () => void {
    this.#listeners.push(listener);
    return () => {
      const i = this.#listeners.indexOf(listener);
      if (i >= 0) this.#listeners.splice(i, 1);
    };
  }

  /** Cancels every timer, rejects waiters, and waits for CA requests in flight to settle. Does not close the CA. */
  async stop(): Promise<void> {
    this.#stopped = true;
    for (const e of [...this.#entries.values()]) this.#drop(e, 'stop');
    await Promise.allSettled([...this.#inflight]);
  }

  get counters(): CertCounters {
    return { ...this.#counters, identities: this.#entries.size };
  }

  snapshot(): CertStatus[] {
    const now = this.#clock.now();
    return [...this.#entries.values()]
      .sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : 0))
      .map((e) => {
        const c = e.current;
        const state: CertState = !c ? 'pending'
          : now >= c.notAfter.getTime() ? 'expired'
            : e.phase !== 'idle' || e.failures > 0 ? 'renewing' : 'valid';
        return {
          identity: e.identity,
          state,
          ...(c && { serial: c.serial, notBefore: c.notBefore, notAfter: c.notAfter }),
          ...(e.nextAt !== undefined && { nextRenewal: new Date(e.nextAt) }),
          failures: e.failures,
          ...(e.lastError && { lastError: e.lastError.message }),
        };
      });
  }

  #newEntry(identity: string): Entry {
    const e: Entry = {
      identity, current: undefined, failures: 0, lastError: undefined, phase: 'idle',
      nextAt: undefined, cancelTimer: undefined, waiters: [], dropped: false,
    };
    this.#entries.set(identity, e);
    return e;
  }

  /** Queues a CA request for the entry unless one is already queued or running. */
  #request(e: Entry, urgent: boolean): void {
    this.#cancelTimer(e);
    if (e.phase !== 'idle') {
      if (urgent) this.#promote(e);
      return;
    }
    e.phase = 'queued';
    (urgent ? this.#urgent : this.#background).push(e);
    this.#pump();
  }

  #promote(e: Entry): void {
    const i = this.#background.indexOf(e);
    if (i < 0) return;
    this.#background.splice(i, 1);
    this.#urgent.push(e);
  }

  #pump(): void {
    while (this.#running < this.#maxConcurrent) {
      const e = this.#urgent.shift() ?? this.#background.shift();
      if (!e) return;
      if (e.dropped) continue;
      e.phase = 'running';
      this.#running++;
      const p = this.#issue(e).finally(() => {
        this.#running--;
        this.#inflight.delete(p);
        this.#pump();
      });
      this.#inflight.add(p);
    }
  }

  async #issue(e: Entry): Promise<void> {
    const { identity } = e;
    let material: TlsMaterial;
    try {
      const { certSpki, chainProblem, checkLeafIdentity, createCsr, generateP256, keySpki } = await x509Util();
      const { keys, keyPem } = await generateP256();
      const csrPem = await createCsr(identity, keys);
      this.#counters.caRequests++;
      const res = await this.#ca.sign({ csrPem, identity, ttlSeconds: this.#lifetimeSeconds });
      const leaf = checkLeafIdentity(identity, res.chainPem[0]);
      if (!certSpki(leaf.toString('pem')).equals(await keySpki(keys.publicKey))) {
        throw new CaBadResponseError(`the CA returned a certificate for ${identity} with a different public key than the CSR's`);
      }
      const broken = chainProblem(res.chainPem, res.rootsPem);
      if (broken) throw new CaBadResponseError(`the chain the CA returned for ${identity} is unusable: ${broken}`);
      if (leaf.notAfter.getTime() <= this.#clock.now()) {
        throw new CaBadResponseError(`the CA returned a certificate for ${identity} that expired at ${leaf.notAfter.toISOString()} (clock skew?)`);
      }
      material = {
        identity, keyPem,
        chainPem: res.chainPem.join(''),
        rootsPem: res.rootsPem.join(''),
        serial: leaf.serialNumber,
        notBefore: leaf.notBefore,
        notAfter: leaf.notAfter,
      };
    } catch (err) {
      if (!e.dropped) this.#failed(e, err instanceof Error ? err : new Error(String(err)));
      return;
    }
    if (!e.dropped) this.#issued(e, material);
  }

  #issued(e: Entry, m: TlsMaterial): void {
    const now = this.#clock.now();
    const renewed = e.current !== undefined;
    e.current = m;
    e.failures = 0;
    e.lastError = undefined;
    e.phase = 'idle';
    // The schedule starts when we got the certificate: a CA backdates notBefore for clock skew, which with short lifetimes
    // would otherwise put the half-life in the past.
    const start = new Date(Math.max(m.notBefore.getTime(), now));
    const at = renewalTime(start, m.notAfter, this.#random).getTime();
    this.#schedule(e, at);
    for (const w of e.waiters.splice(0)) w.resolve(m);
    this.#log.info({ identity: e.identity, serial: m.serial, notAfter: m.notAfter, nextRenewal: new Date(at) }, 'certificate issued');
    if (!renewed) return;
    this.#counters.renewals++;
    for (const l of this.#listeners) {
      try {
        l(e.identity);
      } catch (err) {
        this.#log.error({ identity: e.identity, err }, 'certificate renewal listener failed');
      }
    }
  }

  #failed(e: Entry, err: Error): void {
    const now = this.#clock.now();
    this.#counters.caFailures++;
    e.lastError = err;
    e.phase = 'idle';
    const validUntil = e.current && now < e.current.notAfter.getTime() ? e.current.notAfter.getTime() : undefined;
    const at = retryTime(now, e.failures, validUntil, this.#random);
    e.failures++;
    this.#schedule(e, at);
    const current = e.current;
    for (const w of e.waiters.splice(0)) {
      if (validUntil !== undefined && current) w.resolve(current);
      else w.reject(new NoValidCertError(e.identity, err));
    }
    this.#log.warn({ identity: e.identity, error: err.message, code: (err as { code?: string }).code, failures: e.failures, retryAt: new Date(at), validUntil: validUntil && new Date(validUntil) },
      'certificate request failed');
  }

  #schedule(e: Entry, at: number): void {
    this.#cancelTimer(e);
    e.nextAt = at;
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, at - this.#clock.now()));
    e.cancelTimer = this.#clock.schedule(() => {
      e.cancelTimer = undefined;
      if (e.dropped) return;
      if (this.#clock.now() < at) {
        this.#schedule(e, at);
        return;
      }
      const valid = e.current !== undefined && this.#clock.now() < e.current.notAfter.getTime();
      this.#request(e, !valid);
    }, delay);
  }

  #cancelTimer(e: Entry): void {
    e.cancelTimer?.();
    e.cancelTimer = undefined;
    e.nextAt = undefined;
  }

  #drop(e: Entry, why: 'retain' | 'stop'): void {
    e.dropped = true;
    this.#cancelTimer(e);
    this.#urgent = this.#urgent.filter((x) => x !== e);
    this.#background = this.#background.filter((x) => x !== e);
    for (const w of e.waiters.splice(0)) w.reject(new IdentityDroppedError(e.identity, why));
    this.#entries.delete(e.identity);
    this.#log.debug({ identity: e.identity, reason: why }, 'certificate dropped');
  }
}
