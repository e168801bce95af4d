// The embedded CA: an ECDSA P-256 self-signed root created once and persisted (root-key.pem 0600, root-cert.pem), shareable
// by several nodes through one directory, that signs SPIFFE leaf certificates from CSRs. It never copies CSR extensions.
import { X509Certificate as NodeX509, randomBytes } from 'node:crypto';
import { link, mkdir, open, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { CertificateAuthority, SignRequest, SignResult } from './ca.js';
import { CaConfigError, CaRejectedError } from './errors.js';
import { checkTrustDomain, parseSpiffeId } from './spiffe.js';
import { certSpki, generateP256, importP256, keySpki, randomSerialHex, type KeyPair } from './pki-node.js';
import { x509Util, type X509Util } from './x509-lazy.js';
import type { x509 } from './x509-util.js';

export const ROOT_KEY_FILE = 'root-key.pem';
export const ROOT_CERT_FILE = 'root-cert.pem';

export interface BuiltinCaOptions {
  trustDomain: string;
  /** Longest leaf lifetime granted; longer requests are shortened. Default 90 days (Istio's maximum). */
  maxTtlSeconds?: number;
  /** How far a leaf's notBefore is moved into the past to tolerate clock skew between nodes. Default 60 s. */
  backdateSeconds?: number;
  /** Lifetime of a root this CA creates. Default 10 years (Istio's self-signed root: 3650 days). */
  rootTtlDays?: number;
  /** Clock, epoch ms; injectable for tests. */
  now?: () => number;
}

const DAY_MS = 86_400_000;

/** What signing needs: @peculiar/x509 (loaded at the first signature), the root parsed by it, its key identifier. */
interface Signer {
  util: X509Util;
  root: x509.X509Certificate;
  ski: string | undefined;
}

export class BuiltinCa implements CertificateAuthority {
  readonly trustDomain: string;
  /** The root as PEM, checked with node:crypto at open; parsed by @peculiar/x509 at the first signature (x509-lazy.ts). */
  readonly #rootPem: string;
  readonly #rootNotAfter: number;
  #signer: Promise<Signer> | undefined;
  readonly #rootKey: CryptoKey;
  readonly #maxTtlMs: number;
  readonly #backdateMs: number;
  readonly #now: () => number;

  private constructor(root: NodeX509, key: CryptoKey, opts: BuiltinCaOptions) {
    this.trustDomain = opts.trustDomain;
    this.#rootPem = root.toString();
    this.#rootNotAfter = Date.parse(root.validTo);
    this.#rootKey = key;
    this.#maxTtlMs = (opts.maxTtlSeconds ?? 90 * 86_400) * 1000;
    this.#backdateMs = (opts.backdateSeconds ?? 60) * 1000;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Opens the CA whose root lives in `dir`, creating the root on first use. Several processes may call this on one
   * directory at once: each file is written to a private temporary name and hard-linked into place, and a process that
   * loses the race reads the winner's file, so all of them end with the same root.
   */
  static async open(dir: string, opts: BuiltinCaOptions): Promise<BuiltinCa> {
    checkTrustDomain(opts.trustDomain);
    const now = opts.now ?? Date.now;
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const keyPath = join(dir, ROOT_KEY_FILE);
    const certPath = join(dir, ROOT_CERT_FILE);
    const keyPem = await readOrCreate(keyPath, 0o600, async () => (await generateP256()).keyPem);
    let keys: KeyPair;
    try {
      keys = await importP256(keyPem);
    } catch (err) {
      throw new CaConfigError(`${keyPath} is not a PKCS#8 ECDSA P-256 key; remove ${ROOT_KEY_FILE} and ${ROOT_CERT_FILE} to create a new root`, { cause: err });
    }
    // If the key's creator died before writing the cert, whoever comes next makes one from the same key.
    const certPem = await readOrCreate(certPath, 0o644, () => makeRoot(keys, opts, now()));
    let root: NodeX509;
    try {
      root = new NodeX509(certPem);
    } catch (err) {
      throw new CaConfigError(`${certPath} is not a PEM certificate; remove it to create a new one from ${ROOT_KEY_FILE}`, { cause: err });
    }
    if (!certSpki(certPem).equals(await keySpki(keys.keys.publicKey))) {
      throw new CaConfigError(`${certPath} does not belong to ${keyPath}; remove both files to create a new root (every node sharing it must then restart)`);
    }
    const notAfter = Date.parse(root.validTo);
    if (Number.isNaN(notAfter)) throw new CaConfigError(`the root in ${certPath} has an unreadable expiry date (${root.validTo}); remove ${ROOT_KEY_FILE} and ${ROOT_CERT_FILE} to create a new one`);
    if (notAfter <= now()) {
      throw new CaConfigError(`the root in ${certPath} expired at ${new Date(notAfter).toISOString()}; remove ${ROOT_KEY_FILE} and ${ROOT_CERT_FILE} to create a new one`);
    }
    return new BuiltinCa(root, keys.keys.privateKey, opts);
  }

  /** A CA with a fresh root kept only in memory: for tests and single-process demos. */
  static async ephemeral(opts: BuiltinCaOptions): Promise<BuiltinCa> {
    checkTrustDomain(opts.trustDomain);
    const keys = await generateP256();
    const root = new NodeX509(await makeRoot(keys, opts, (opts.now ?? Date.now)()));
    return new BuiltinCa(root, keys.keys.privateKey, opts);
  }

  get rootPem(): string {
    return this.#rootPem;
  }

  /** @peculiar/x509 and the root parsed by it, with its key identifier: loaded at the first signature, once. */
  #x509(): Promise<Signer> {
    const signer = (this.#signer ??= x509Util().then((util) => {
      const root = new util.x509.X509Certificate(this.#rootPem);
      return { util, root, ski: root.getExtension(util.x509.SubjectKeyIdentifierExtension)?.keyId };
    }));
    signer.catch(() => {
      if (this.#signer === signer) this.#signer = undefined; // tried again at the next signature
    });
    return signer;
  }

  /**
   * Issues a leaf for `req.identity`. Refuses (CaRejectedError) a CSR that does not parse, whose signature does not verify,
   * or whose SANs are anything but exactly the one URI `identity`; and an identity outside this CA's trust domain.
   * The leaf: no subject, one critical URI SAN, digitalSignature + keyEncipherment, serverAuth + clientAuth, random serial,
   * notBefore backdated for clock skew, notAfter = now + ttl (shortened to the maximum and to the root's own expiry).
   */
  async sign(req: SignRequest): Promise<SignResult> {
    const { util, root, ski } = await this.#x509();
    const { x509, soleUriSan, ECDSA_SHA256 } = util;
    const csr = parseCsr(x509, req.csrPem);
    if (!(await csr.verify().catch(() => false))) throw new CaRejectedError('CSR signature does not verify');
    let td: string;
    try {
      td = parseSpiffeId(req.identity).trustDomain;
    } catch (err) {
      throw new CaRejectedError(`cannot issue for ${JSON.stringify(req.identity)}`, { cause: err });
    }
    if (td !== this.trustDomain) {
      throw new CaRejectedError(`identity ${req.identity} is outside this CA's trust domain ${this.trustDomain}`);
    }
    const san = soleUriSan(csr);
    if ('reason' in san) throw new CaRejectedError(`CSR for ${req.identity} refused: ${san.reason}`);
    if (san.uri !== req.identity) throw new CaRejectedError(`CSR names ${san.uri}, not the requested ${req.identity}`);
    if (!Number.isFinite(req.ttlSeconds) || req.ttlSeconds <= 0) {
      throw new CaRejectedError(`requested lifetime ${req.ttlSeconds}s must be a positive number of seconds`);
    }
    const now = this.#now();
    const notAfter = Math.min(now + Math.min(req.ttlSeconds * 1000, this.#maxTtlMs), this.#rootNotAfter);
    const extensions: x509.Extension[] = [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      // RFC 5280 4.2.1.6: with an empty subject the SAN extension must be critical.
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: req.identity }], true),
    ];
    if (ski) extensions.push(new x509.AuthorityKeyIdentifierExtension(ski));
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: randomSerialHex(),
      subject: new x509.Name([]),
      issuer: root.subjectName,
      notBefore: new Date(now - this.#backdateMs),
      notAfter: new Date(notAfter),
      signingAlgorithm: ECDSA_SHA256,
      publicKey: csr.publicKey,
      signingKey: this.#rootKey,
      extensions,
    });
    return { chainPem: [leaf.toString('pem') + '\n'], rootsPem: [this.rootPem] };
  }
}

function parseCsr(x: typeof x509, pem: string): x509.Pkcs10CertificateRequest {
  try {
    return new x.Pkcs10CertificateRequest(pem);
  } catch (err) {
    throw new CaRejectedError('CSR is not a PEM PKCS#10 certificate request', { cause: err });
  }
}

async function makeRoot(keys: KeyPair, opts: BuiltinCaOptions, now: number): Promise<string> {
  const { x509, ECDSA_SHA256 } = await x509Util();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerialHex(),
    name: [{ O: [opts.trustDomain] }, { CN: ['ambient-node root CA'] }],
    notBefore: new Date(now - (opts.backdateSeconds ?? 60) * 1000),
    notAfter: new Date(now + (opts.rootTtlDays ?? 3650) * DAY_MS),
    signingAlgorithm: ECDSA_SHA256,
    keys: keys.keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.keys.publicKey),
    ],
  });
  return cert.toString('pem') + '\n';
}

/**
 * Reads `path`, or creates it with `make()`: written (and fsynced) under a unique temporary name, then hard-linked into
 * place, which fails with EEXIST when another process got there first; then that process's file is read instead.
 * Readers therefore never see a half-written file.
 */
async function readOrCreate(path: string, mode: number, make: () => Promise<string>): Promise<string> {
  const existing = await readIfExists(path);
  if (existing !== undefined) return existing;
  const content = await make();
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    const fh = await open(tmp, 'wx', mode);
    try {
      await fh.writeFile(content);
      await fh.sync();
    } finally {
      await fh.close();
    }
    try {
      await link(tmp, path);
      return content;
    } catch (err) {
      if (errCode(err) !== 'EEXIST') throw err;
      const theirs = await readIfExists(path);
      if (theirs === undefined) throw new CaConfigError(`${path} vanished while the CA was being opened`, { cause: err });
      return theirs;
    }
  } catch (err) {
    if (err instanceof CaConfigError) throw err;
    throw new CaConfigError(`cannot create ${path} (is the state directory writable?)`, { cause: err });
  } finally {
    await rm(tmp, { force: true });
  }
}

async function readIfExists(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    if (errCode(err) === 'ENOENT') return undefined;
    throw new CaConfigError(`cannot read ${path}`, { cause: err });
  }
}

function errCode(err: unknown): string | undefined {
  return err instanceof Error && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}
