// Client of Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`, istiod :15012) over gRPC + TLS,
// asking on behalf of workloads (ImpersonatedIdentity) as ztunnel does. One call per CSR; retries belong to the manager.
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { CertificateAuthority, SignRequest, SignResult } from './ca.js';
import { CaBadResponseError, CaConfigError, CaRejectedError, CaUnavailableError } from './errors.js';
import { checkLeafIdentity, splitPemCertificates } from './x509-util.js';

/** Key of the request's `metadata` Struct that names the workload identity (istio `security.ImpersonatedIdentity`). */
export const IMPERSONATED_IDENTITY = 'ImpersonatedIdentity';
export const CREATE_CERTIFICATE_PATH = '/istio.v1.auth.IstioCertificateService/CreateCertificate';
/** Must be shipped beside the compiled module (the build copies it to dist). */
export const ISTIO_CA_PROTO = fileURLToPath(new URL('./istioca.proto', import.meta.url));

export interface IstioCaOptions {
  /** `host:port` of the CA (Istio: `istiod.istio-system.svc:15012`), or `unix:/path`. */
  address: string;
  /** PEM root(s) that sign the CA's serving certificate (Istio: the istio-ca-root-cert ConfigMap). A change rebuilds the channel. */
  rootCertFile: string;
  /** Bearer JWT file (Istio: projected token, audience istio-ca); read again on every call because kubelet rotates it. */
  tokenFile?: string;
  /** Sent as the `clusterid` header (Istio multi-cluster). */
  clusterId?: string;
  /** Deadline of one call. Default 10 s. */
  timeoutMs?: number;
  /** Ask on behalf of the identity (ImpersonatedIdentity); false when the caller's own identity is wanted. Default true. */
  impersonate?: boolean;
  /** Name to verify on the CA's serving certificate when it is not the address's host. */
  tlsServerName?: string;
}

export const DEFAULT_CA_TIMEOUT_MS = 10_000;

/** The request as proto-loader takes it (keepCase field names; Struct as `fields`). */
interface WireRequest {
  csr: string;
  validity_duration: number;
  metadata?: { fields: Record<string, { stringValue: string }> };
}

let service: protoLoader.ServiceDefinition | undefined;

/** The service definition from istioca.proto, loaded once; also used by the test server. */
export function istioCaService(): protoLoader.ServiceDefinition {
  if (service) return service;
  const pkg = protoLoader.loadSync(ISTIO_CA_PROTO, { keepCase: true, longs: Number, defaults: true, oneofs: true });
  const def = pkg['istio.v1.auth.IstioCertificateService'];
  if (!def || !('CreateCertificate' in def)) throw new Error(`${ISTIO_CA_PROTO} does not define IstioCertificateService`);
  service = def as protoLoader.ServiceDefinition;
  return service;
}

export class IstioCa implements CertificateAuthority {
  readonly #opts: IstioCaOptions;
  readonly #method: protoLoader.MethodDefinition<object, object>;
  #client: grpc.Client | undefined;
  #clientRoots: string | undefined;

  constructor(opts: IstioCaOptions) {
    this.#opts = opts;
    const m = istioCaService()['CreateCertificate'];
    if (!m) throw new Error('CreateCertificate missing from istioca.proto');
    this.#method = m;
  }

  async sign(req: SignRequest): Promise<SignResult> {
    const md = new grpc.Metadata();
    const token = await this.#token();
    if (token !== undefined) md.set('authorization', `Bearer ${token}`);
    if (this.#opts.clusterId) md.set('clusterid', this.#opts.clusterId);
    const wire: WireRequest = { csr: req.csrPem, validity_duration: Math.max(1, Math.ceil(req.ttlSeconds)) };
    if (this.#opts.impersonate ?? true) wire.metadata = { fields: { [IMPERSONATED_IDENTITY]: { stringValue: req.identity } } };
    const client = await this.#channel();
    const timeoutMs = this.#opts.timeoutMs ?? DEFAULT_CA_TIMEOUT_MS;
    const raw = await new Promise<object>((resolve, reject) => {
      client.makeUnaryRequest<WireRequest, object>(
        CREATE_CERTIFICATE_PATH,
        (v) => this.#method.requestSerialize(v),
        (b) => this.#method.responseDeserialize(b),
        wire, md, { deadline: Date.now() + timeoutMs },
        (err, value) => (err ? reject(this.#mapError(err, req.identity)) : resolve(value ?? {})),
      );
    });
    const result = splitIstioChain(parseResponse(raw));
    checkLeafIdentity(req.identity, result.chainPem[0]);
    return result;
  }

  close(): void {
    this.#client?.close();
    this.#client = undefined;
    this.#clientRoots = undefined;
  }

  async #token(): Promise<string | undefined> {
    const file = this.#opts.tokenFile;
    if (file === undefined) return undefined;
    let token: string;
    try {
      token = (await readFile(file, 'utf8')).trim();
    } catch (err) {
      throw new CaConfigError(`cannot read the CA token ${file} (is the projected service-account token mounted?)`, { cause: err });
    }
    if (token === '') throw new CaConfigError(`the CA token ${file} is empty`);
    return token;
  }

  /** The gRPC client, rebuilt when the root file's content changed (Istio rotates its root). */
  async #channel(): Promise<grpc.Client> {
    let roots: string;
    try {
      roots = await readFile(this.#opts.rootCertFile, 'utf8');
    } catch (err) {
      throw new CaConfigError(`cannot read the CA root certificate ${this.#opts.rootCertFile}`, { cause: err });
    }
    if (this.#client && roots === this.#clientRoots) return this.#client;
    if (splitPemCertificates(roots).length === 0) throw new CaConfigError(`${this.#opts.rootCertFile} holds no PEM certificate`);
    this.close();
    const options: grpc.ChannelOptions = {};
    if (this.#opts.tlsServerName) {
      options['grpc.ssl_target_name_override'] = this.#opts.tlsServerName;
      options['grpc.default_authority'] = this.#opts.tlsServerName;
    }
    try {
      this.#client = new grpc.Client(this.#opts.address, grpc.credentials.createSsl(Buffer.from(roots)), options);
    } catch (err) {
      throw new CaConfigError(`cannot set up the channel to the CA at ${this.#opts.address}`, { cause: err });
    }
    this.#clientRoots = roots;
    return this.#client;
  }

  #mapError(err: grpc.ServiceError, identity: string): Error {
    const where = `CA ${this.#opts.address}`;
    const detail = `${grpc.status[err.code] ?? err.code}: ${err.details || err.message}`;
    switch (err.code) {
      case grpc.status.UNAVAILABLE:
      case grpc.status.DEADLINE_EXCEEDED:
      case grpc.status.CANCELLED:
      case grpc.status.RESOURCE_EXHAUSTED:
      case grpc.status.ABORTED:
      case grpc.status.INTERNAL:
      case grpc.status.UNKNOWN:
        return new CaUnavailableError(
          `${where} is unavailable (${detail}); is it reachable, and does ${this.#opts.rootCertFile} sign its serving certificate?`, { cause: err });
      case grpc.status.UNAUTHENTICATED:
      case grpc.status.PERMISSION_DENIED:
        return new CaRejectedError(
          `${where} refused to issue for ${identity} (${detail}); check the token's audience and that this node's service account may impersonate (CA_TRUSTED_NODE_ACCOUNTS)`, { cause: err });
      default:
        return new CaRejectedError(`${where} refused to issue for ${identity} (${detail})`, { cause: err });
    }
  }
}

function parseResponse(raw: object): string[] {
  const chain: unknown = 'cert_chain' in raw ? raw.cert_chain : undefined;
  if (!Array.isArray(chain) || !chain.every((c): c is string => typeof c === 'string')) {
    throw new CaBadResponseError('the CA response has no cert_chain list of strings');
  }
  return chain;
}

/**
 * Splits Istio's `cert_chain` (leaf first, root last; any element may hold several concatenated PEMs, the last one
 * possibly several roots) into our shape: every certificate before the last element is the chain, the last element's
 * certificates are the roots.
 */
export function splitIstioChain(certChain: readonly string[]): SignResult {
  if (certChain.length < 2) throw new CaBadResponseError(`the CA returned ${certChain.length} certificate entries; expected the leaf and at least one root`);
  const chainPem = certChain.slice(0, -1).flatMap(splitPemCertificates);
  const rootsPem = splitPemCertificates(certChain[certChain.length - 1] ?? '');
  if (chainPem.length === 0) throw new CaBadResponseError('the CA response holds no leaf certificate');
  if (rootsPem.length === 0) throw new CaBadResponseError('the CA response holds no root certificate');
  return { chainPem, rootsPem };
}
