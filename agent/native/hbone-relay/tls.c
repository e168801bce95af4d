/*
 * TLS of the HBONE sessions (OpenSSL 3): the contexts made for the agent's identities, a session's SSL object and
 * BIOs, the handshake, and the check of the peer's identity (the ALPN of relay.cfg, one SPIFFE URI SAN, the rule of its
 * role). TLS 1.3 only is fixed here, not a setting: the suites setting (relay.cfg.ciphersuites) is a TLS 1.3 list.
 * Ownership: an SSL_CTX made here belongs to its ctx_entry (api.c), and each SSL object holds its own reference; a
 * session's SSL and BIOs belong to the session (freed by reap). Loop thread, except tls_ctx_new and spiffe_check (pure),
 * which the agent's thread calls.
 */
#include "relay.h"

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* Fills out with `what` and OpenSSL's first queued error, and clears the queue. */
void tls_error_string(char *out, size_t n, const char *what) {
  unsigned long e = ERR_get_error();
  char tmp[200] = "";
  if (e) ERR_error_string_n(e, tmp, sizeof tmp);
  snprintf(out, n, "%s%s%s", what, e ? ": " : "", tmp);
  ERR_clear_error();
}

static int load_pem_chain(SSL_CTX *ctx, const char *pem, int roots) {
  BIO *bio = BIO_new_mem_buf(pem, -1);
  if (!bio) return -1;
  int count = 0, rc = 0;
  X509 *x;
  X509_STORE *store = roots ? SSL_CTX_get_cert_store(ctx) : NULL;
  while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL))) {
    if (roots) {
      if (!X509_STORE_add_cert(store, x)) rc = -1;
      X509_free(x);
    } else if (count == 0) {
      if (SSL_CTX_use_certificate(ctx, x) != 1) rc = -1;
      X509_free(x);
    } else if (SSL_CTX_add_extra_chain_cert(ctx, x) != 1) { /* takes ownership on success */
      X509_free(x);
      rc = -1;
    }
    count++;
  }
  ERR_clear_error(); /* the PEM reader ends with "no start line" */
  BIO_free(bio);
  return count ? rc : -1;
}

/* The server's choice: the client must offer relay.cfg.alpn. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  size_t want = strlen(relay.cfg.alpn);
  for (unsigned i = 0; i < inlen;) {
    unsigned l = in[i];
    if (i + 1 + l > inlen) break;
    if (l == want && memcmp(in + i + 1, relay.cfg.alpn, want) == 0) {
      *out = in + i + 1;
      *outlen = (unsigned char)want;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + l;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/*
 * A TLS context for one identity's material: TLS 1.3 only, the suites and ALPN of relay.cfg, the peer's certificate
 * required. Call only while the relay is started (relay.cfg set).
 */
SSL_CTX *tls_ctx_new(int server, const char *chain, const char *key, const char *roots, char *err, size_t errn) {
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) {
    tls_error_string(err, errn, "SSL_CTX_new");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_read_ahead(ctx, 1); /* whole socket reads, not two per record */
  SSL_CTX_set_default_read_buffer_len(ctx, TLS_READ);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_set_ciphersuites(ctx, relay.cfg.ciphersuites) != 1) goto fail_ssl;
  if (load_pem_chain(ctx, chain, 0)) {
    tls_error_string(err, errn, "certificate chain");
    goto fail;
  }
  BIO *kb = BIO_new_mem_buf(key, -1);
  EVP_PKEY *pk = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
  BIO_free(kb);
  if (!pk || SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    EVP_PKEY_free(pk);
    tls_error_string(err, errn, "private key");
    goto fail;
  }
  EVP_PKEY_free(pk);
  if (load_pem_chain(ctx, roots, 1)) {
    tls_error_string(err, errn, "roots");
    goto fail;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
  if (server) {
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  } else {
    unsigned char wire[256]; /* ALPN's wire form: one length byte, then the name (at most 255 bytes, checked at start) */
    size_t n = strlen(relay.cfg.alpn);
    wire[0] = (unsigned char)n;
    memcpy(wire + 1, relay.cfg.alpn, n);
    if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)(n + 1)) != 0) goto fail_ssl;
  }
  return ctx;
fail_ssl:
  tls_error_string(err, errn, "TLS settings");
fail:
  SSL_CTX_free(ctx);
  return NULL;
}

/* The TLS part of ahb_start's check: OpenSSL takes the suites (all of them known, none empty). 0, or -1 and err. */
int tls_check_settings(const struct ahb_settings *cfg, char *err, size_t errn) {
  SSL_CTX *ctx = SSL_CTX_new(TLS_method());
  if (!ctx) {
    tls_error_string(err, errn, "SSL_CTX_new");
    return -1;
  }
  int ok = SSL_CTX_set_ciphersuites(ctx, cfg->ciphersuites) == 1;
  SSL_CTX_free(ctx);
  if (ok) return 0;
  char why[300];
  tls_error_string(why, sizeof why, "OpenSSL refused them");
  snprintf(err, errn, "bad setting ciphersuites \"%.100s\": %s", cfg->ciphersuites, why);
  return -1;
}

/*
 * The session's SSL object over its fd. Reads go straight from the socket; writes through a 64 KiB buffer flushed at
 * the end of every flush, so several TLS records leave in one write() (each write pushes segments through the whole
 * path between the pods). -1 (session failed) when memory runs out.
 */
int tls_session_new(struct session *s, SSL_CTX *ctx) {
  s->ssl = SSL_new(ctx);
  BIO *sock = s->ssl ? BIO_new_socket(s->io.fd, BIO_NOCLOSE) : NULL;
  BIO *wbuf = sock ? BIO_new(BIO_f_buffer()) : NULL;
  if (!wbuf || !BIO_set_write_buffer_size(wbuf, 64 * 1024) || !BIO_up_ref(sock)) {
    BIO_free(wbuf);
    BIO_free(sock);
    session_fail(s, "SSL_new");
    return -1;
  }
  BIO_push(wbuf, sock);
  SSL_set_bio(s->ssl, sock, wbuf);
  return 0;
}

/* One step of the handshake: 1 done, 0 waiting for the socket, -1 failed (session failed with why). */
int tls_handshake_step(struct session *s) {
  int rc = s->server ? SSL_accept(s->ssl) : SSL_connect(s->ssl);
  if (rc == 1) return 1;
  int e = SSL_get_error(s->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return 0;
  char why[300];
  long vr = SSL_get_verify_result(s->ssl);
  if (vr != X509_V_OK) {
    snprintf(why, sizeof why, "TLS handshake: certificate verify failed: %s", X509_verify_cert_error_string(vr));
    ERR_clear_error();
  } else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
    snprintf(why, sizeof why, "TLS handshake: connection closed by peer");
    ERR_clear_error();
  } else {
    tls_error_string(why, sizeof why, "TLS handshake");
  }
  session_fail(s, why);
  return -1;
}

/* The single spiffe:// URI SAN of a certificate into out; -1 when there is none or more than one. */
static int spiffe_id(X509 *cert, char *out, size_t n) {
  GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  int found = 0;
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
    GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);
    if (g->type != GEN_URI) continue;
    const unsigned char *d = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
    int l = ASN1_STRING_length(g->d.uniformResourceIdentifier);
    if (l < 9 || memcmp(d, "spiffe://", 9) != 0) continue;
    if ((size_t)l >= n || memchr(d, 0, (size_t)l)) {
      found = 2;
      continue;
    }
    memcpy(out, d, (size_t)l);
    out[l] = 0;
    found++;
  }
  GENERAL_NAMES_free(names);
  return found == 1 ? 0 : -1;
}

static int seg_ok(const char *p, size_t n, int lower_only) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' || (!lower_only && c >= 'A' && c <= 'Z');
    if (!ok) return 0;
  }
  return 1;
}

/*
 * Checks a SPIFFE ID against Istio's shape with the rules of parseSpiffeId (agent/src/identity/spiffe.ts), the agent's
 * TypeScript side of the one rule (test/unit/hbone-spiffe-rule.test.ts runs one table against both): at most 2048 bytes; "spiffe://"; no query or fragment; exactly <td>/ns/<ns>/sa/<sa>; a trust
 * domain of 1-255 of [a-z0-9._-]; namespace and service account non-empty, of [A-Za-z0-9._-], not "." or "..". When
 * `td` is given, the trust domain must equal it. Returns NULL when valid, else the rule broken. Pure.
 */
const char *spiffe_check(const char *uri, const char *td) {
  size_t len = strlen(uri);
  if (len > SPIFFE_ID_MAX) return "longer than 2048 bytes";
  if (strncmp(uri, "spiffe://", 9) != 0) return "must start with \"spiffe://\"";
  const char *rest = uri + 9;
  if (strpbrk(rest, "?#")) return "query and fragment are not allowed";
  const char *seg[6];
  size_t seglen[6];
  int parts = 0;
  for (const char *p = rest;;) {
    const char *slash = strchr(p, '/');
    size_t n = slash ? (size_t)(slash - p) : strlen(p);
    if (parts < 6) {
      seg[parts] = p;
      seglen[parts] = n;
    }
    parts++;
    if (!slash) break;
    p = slash + 1;
  }
  if (seglen[0] == 0) return "missing trust domain";
  if (seglen[0] > 255) return "trust domain longer than 255 characters";
  if (!seg_ok(seg[0], seglen[0], 1)) return "trust domain may hold only lowercase letters, digits, \".\", \"-\" and \"_\"";
  if (parts != 5) return "expected 5 path segments <td>/ns/<namespace>/sa/<service-account>";
  if (seglen[1] != 2 || memcmp(seg[1], "ns", 2) != 0) return "second segment must be \"ns\"";
  if (seglen[3] != 2 || memcmp(seg[3], "sa", 2) != 0) return "fourth segment must be \"sa\"";
  for (int i = 2; i <= 4; i += 2) {
    if (seglen[i] == 0) return i == 2 ? "empty namespace" : "empty service account";
    if ((seglen[i] == 1 && seg[i][0] == '.') || (seglen[i] == 2 && memcmp(seg[i], "..", 2) == 0)) return i == 2 ? "namespace may not be \".\" or \"..\"" : "service account may not be \".\" or \"..\"";
    if (!seg_ok(seg[i], seglen[i], 0)) return i == 2 ? "namespace may hold only letters, digits, \".\", \"-\" and \"_\"" : "service account may hold only letters, digits, \".\", \"-\" and \"_\"";
  }
  if (td && (strlen(td) != seglen[0] || memcmp(seg[0], td, seglen[0]) != 0)) return "not in this trust domain";
  return NULL;
}

/*
 * After the TLS handshake: ALPN h2, and the peer's identity: its serial and expiry recorded for the "up" event, then
 * the rule of the role (client: exactly the expected SPIFFE ID; server: a valid ID in our trust domain). 0, or -1
 * (session failed; identity_refused set when the identity was the reason).
 */
int tls_check_peer(struct session *s) {
  const unsigned char *alpn = NULL;
  unsigned alen = 0;
  SSL_get0_alpn_selected(s->ssl, &alpn, &alen);
  if (alen != 2 || memcmp(alpn, "h2", 2) != 0) {
    session_fail(s, "peer did not negotiate ALPN h2");
    return -1;
  }
  X509 *peer = SSL_get1_peer_certificate(s->ssl);
  if (!peer) {
    session_fail(s, "peer presented no certificate");
    return -1;
  }
  int ok = spiffe_id(peer, s->peer, sizeof s->peer) == 0;
  char serial[130] = "";
  BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(peer), NULL);
  char *hex = bn ? BN_bn2hex(bn) : NULL;
  if (hex) snprintf(serial, sizeof serial, "%s", hex);
  OPENSSL_free(hex);
  BN_free(bn);
  int64_t not_after = 0;
  const ASN1_TIME *na = X509_get0_notAfter(peer);
  struct tm tm;
  if (na && ASN1_TIME_to_tm(na, &tm)) not_after = (int64_t)timegm(&tm) * 1000;
  s->peer_not_after = not_after;
  snprintf(s->peer_serial, sizeof s->peer_serial, "%s", serial);
  X509_free(peer);
  if (!ok) {
    s->identity_refused = 1;
    session_fail(s, s->server ? "client certificate has no single SPIFFE URI SAN" : "HBONE peer presented no single SPIFFE URI SAN");
    return -1;
  }
  if (s->server) {
    /* spiffe://<our td>/ns/<ns>/sa/<sa>, by the same rules as parseSpiffeId (agent/src/identity/spiffe.ts). */
    const char *bad = spiffe_check(s->peer, s->expected);
    if (bad) {
      char why[900];
      snprintf(why, sizeof why, "client identity %.600s refused: %s", s->peer, bad);
      s->identity_refused = 1;
      session_fail(s, why);
      return -1;
    }
  } else if (strcmp(s->peer, s->expected) != 0) {
    char why[1100];
    snprintf(why, sizeof why, "HBONE peer presented identity %.500s but %.500s was expected", s->peer, s->expected);
    s->identity_refused = 1;
    session_fail(s, why);
    return -1;
  }
  return 0;
}
