/*
 * Native HBONE data plane: mutual TLS 1.3 (OpenSSL 3) + HTTP/2 CONNECT (nghttp2) + byte pumping, on one epoll thread.
 * The TypeScript agent keeps the control plane (decisions, pooling, policy, dialling) and drives this through koffi.
 *
 * Threading: ahb_start() spawns the loop thread and returns the agent's end of a socketpair on which the loop writes
 * events as JSON lines. Every other ahb_* call runs on the caller's thread: it copies its arguments into a command,
 * queues it under a mutex and wakes the loop (eventfd); ids are allocated by the caller so calls return at once.
 * Ownership: fds handed over (TCP to a peer, app sockets) belong to the library from then on and are closed by it on
 * every path; SSL, nghttp2 and buffers are freed when their session or stream is reaped at the end of a loop turn
 * (never inside an nghttp2 callback).
 * Lifetime of a stream (what makes any order of API calls memory-safe, checked under ASan by agent/native/test/):
 * nghttp2 holds a stream (as stream user data and data source) from nghttp2_submit_request (client) or
 * on_begin_headers (server) until on_stream_close; `dead` is set only when nghttp2 does not hold it (never submitted,
 * or h2_closed), and only dead streams are freed (reap), except when the whole session is freed, where every stream
 * goes just before nghttp2_session_del. A client stream queued while its session handshakes is submitted only if it is
 * still alive when the handshake ends; one aborted while queued is reaped at once, never submitted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define STREAM_WINDOW (4 * 1024 * 1024)
#define CONNECTION_WINDOW (16 * 1024 * 1024)
#define MAX_FRAME (1024 * 1024)
#define APP_BUF (256 * 1024)
/* Bytes kept free before the data of a stream's `in` buffer, so a DATA frame header fits in front of its payload. */
#define HEADROOM 16
#define TLS_READ (64 * 1024)
#define TLS_WBUF_FLUSH (128 * 1024)
#define KEEPALIVE_INTERVAL_MS 10000
#define KEEPALIVE_TIMEOUT_MS 20000
#define HBONE_CIPHERSUITES "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256"
/* What we advertise as SETTINGS_MAX_HEADER_LIST_SIZE, enforced on what we receive (nghttp2 does not enforce it). */
#define SERVER_MAX_HEADER_LIST (64 * 1024)
#define CLIENT_MAX_HEADER_LIST (16 * 1024)
/* HTTP/2's size of a header field: name + value + 32 (RFC 9113 6.5.2). */
#define HEADER_OVERHEAD 32
/* Longest :method and :authority carried to the agent (an authority is ip:port, or host:port for double HBONE). */
#define MAX_METHOD 32
#define MAX_AUTHORITY 1024
/*
 * SETTINGS_MAX_CONCURRENT_STREAMS of a server session, and the most requests of one session the agent may be working on
 * at once (told of, not answered yet, whether or not the peer has reset them since): beyond it, REFUSED_STREAM.
 */
#define SERVER_MAX_STREAMS 200
/* After this many streams freed since the last trim, freed memory is handed back to the system (a burst of streams). */
#define TRIM_AFTER_STREAMS 4096

enum io_kind { IO_WAKE, IO_TIMER, IO_EVENTS, IO_SESSION, IO_APP };

struct io {
  enum io_kind kind;
  int fd;
  uint32_t mask; /* current epoll interest, 0 = not registered */
};

struct buf {
  char *p;
  size_t off, len, cap;
};

struct session;

struct stream {
  struct io io; /* the app socket (downstream on the client side, upstream on the server side) */
  uint64_t id;
  int32_t h2id; /* -1 until submitted */
  struct session *s;
  struct stream *next_in_session, *next_all;
  struct buf in;  /* read from the app, waiting to go out as DATA */
  struct buf out; /* DATA received, waiting to be written to the app */
  int status;     /* response status (client) or answer (server); 0 = not yet */
  unsigned app_eof : 1, peer_eof : 1, app_shut : 1, h2_closed : 1, dead : 1, reported : 1, relaying : 1, errored : 1;
  unsigned deferred : 1, answered : 1, cancel : 1, status_reported : 1;
  /* Server side: request received in the read being processed, not reported yet (see session_report_requests); the
   * agent was told of the request and has neither answered nor closed the stream. */
  unsigned fresh : 1, awaiting : 1;
  struct stream *next_fresh;
  uint32_t h2_error;
  _Atomic uint64_t bytes_in;  /* read from the app socket */
  _Atomic uint64_t bytes_out; /* written to the app socket */
  /* Server side: the request as received (only what the agent reads; other headers are counted, never kept). */
  char *method, *authority;
  size_t header_bytes; /* of the header block being received, as HTTP/2 counts it */
  int64_t closed_ms;   /* when HTTP/2 closed the stream, then when its app last took bytes (0: open) */
  /* Client side: the request to submit. */
  nghttp2_nv *nva;
  size_t nvlen;
  char *nvstore;
};

struct session {
  struct io io;
  uint64_t id;
  int server;
  SSL *ssl;
  nghttp2_session *h2;
  int handshaking, up, dead, graceful, identity_refused;
  int ready;             /* server: the client's SETTINGS arrived (the HTTP/2 handshake is done); client: = up */
  int timed_out;         /* closed because the TLS + HTTP/2 handshake missed its deadline */
  int64_t deadline_ms;   /* handshake deadline (0: none) */
  int64_t last_active_ms; /* last time a stream opened or ended (idle limit of server sessions) */
  char *expected;     /* client: the peer SPIFFE ID we require; server: the trust domain */
  char peer[2049];    /* verified peer identity (SPIFFE IDs are at most 2048 bytes) */
  char peer_serial[130];
  int64_t peer_not_after;
  struct buf wbuf;    /* TLS plaintext waiting for SSL_write */
  struct stream *streams;
  struct stream *pending; /* client streams queued before the handshake finished */
  struct stream *fresh, **fresh_tail; /* server: requests received in this read, reported once it is processed */
  int awaiting;          /* server: streams with `awaiting` set (the agent's work in progress for this session) */
  uint32_t goaway_code;  /* the error code of the GOAWAY that ends this session (nghttp2's, or ours for a failed read) */
  int64_t last_ping_ms, ping_sent_ms;
  char error[1200];
  struct session *next;
};

struct ctx_entry {
  uint64_t id;
  SSL_CTX *ctx;
  struct ctx_entry *next;
};

enum cmd_kind { CMD_CLIENT_SESSION, CMD_SERVER_SESSION, CMD_CLIENT_STREAM, CMD_ANSWER, CMD_CLOSE_STREAM, CMD_CLOSE_SESSION, CMD_STOP };

struct cmd {
  enum cmd_kind kind;
  uint64_t id, ref; /* the new object's id; the session (or ctx) it refers to */
  int fd, status, flag;
  char *a, *b;  /* strings the command owns */
  SSL_CTX *ctx; /* sessions: the TLS context, referenced when the call was made (a later ahb_ctx_free cannot take it) */
  struct cmd *next;
};

static struct {
  pthread_mutex_t mu; /* guards cmds, ctxs and the all-streams list */
  pthread_t thread;
  int running;
  int epfd, wakefd, timerfd, evfd;
  struct io wake_io, timer_io, ev_io;
  struct cmd *cmds, *cmds_tail;
  struct ctx_entry *ctxs;
  struct session *sessions;
  struct stream *all_streams;
  _Atomic uint64_t next_id;
  struct buf events;
  int stop;
  char err[512];
  /* Limits (ahb_set_limits; read on the loop thread). */
  _Atomic int handshake_ms, idle_ms, linger_ms;
} G = {.mu = PTHREAD_MUTEX_INITIALIZER, .epfd = -1, .wakefd = -1, .timerfd = -1, .evfd = -1, .handshake_ms = 10000, .idle_ms = 600000, .linger_ms = 30000};

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- buffers ---------- */

static int buf_reserve(struct buf *b, size_t extra) {
  if (b->off && b->off + b->len + extra > b->cap) {
    memmove(b->p, b->p + b->off, b->len);
    b->off = 0;
  }
  if (b->len + extra <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 4096;
  while (cap < b->len + extra) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) return -1;
  b->p = p;
  b->cap = cap;
  return 0;
}

static int buf_append(struct buf *b, const void *d, size_t n) {
  if (buf_reserve(b, n)) return -1;
  memcpy(b->p + b->off + b->len, d, n);
  b->len += n;
  return 0;
}

static void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (!b->len) b->off = 0;
}

static void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---------- events (JSON lines to the agent) ---------- */

static void json_str(struct buf *b, const char *s) {
  buf_append(b, "\"", 1);
  for (; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      buf_append(b, esc, 2);
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      buf_append(b, esc, 6);
    } else {
      buf_append(b, s, 1);
    }
  }
  buf_append(b, "\"", 1);
}

static void ev_update(void);

static void ev_flush(void) {
  while (G.events.len) {
    ssize_t n = send(G.evfd, G.events.p + G.events.off, G.events.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf_consume(&G.events, (size_t)n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break; /* EAGAIN: wait for EPOLLOUT; other errors: the agent is gone, the stop command follows */
  }
  ev_update();
}

/* Appends one event; `fmt` gives the fields after "ev" in JSON (the caller escapes strings with ev_strfield). */
static void ev_begin(const char *ev) {
  buf_append(&G.events, "{\"ev\":\"", 7);
  buf_append(&G.events, ev, strlen(ev));
  buf_append(&G.events, "\"", 1);
}

static void ev_num(const char *k, int64_t v) {
  char tmp[96];
  int n = snprintf(tmp, sizeof tmp, ",\"%s\":%lld", k, (long long)v);
  buf_append(&G.events, tmp, (size_t)n);
}

static void ev_str(const char *k, const char *v) {
  buf_append(&G.events, ",\"", 2);
  buf_append(&G.events, k, strlen(k));
  buf_append(&G.events, "\":", 2);
  json_str(&G.events, v);
}

static void ev_end(void) { buf_append(&G.events, "}\n", 2); }

/* ---------- epoll ---------- */

static void io_set(struct io *io, uint32_t mask) {
  if (io->fd < 0 || io->mask == mask) return;
  struct epoll_event e = {.events = mask, .data.ptr = io};
  if (!mask) {
    epoll_ctl(G.epfd, EPOLL_CTL_DEL, io->fd, NULL);
  } else if (!io->mask) {
    epoll_ctl(G.epfd, EPOLL_CTL_ADD, io->fd, &e);
  } else {
    epoll_ctl(G.epfd, EPOLL_CTL_MOD, io->fd, &e);
  }
  io->mask = mask;
}

static void ev_update(void) { io_set(&G.ev_io, G.events.len ? (EPOLLIN | EPOLLOUT) : EPOLLIN); }

static void io_close(struct io *io) {
  if (io->fd < 0) return;
  io_set(io, 0);
  close(io->fd);
  io->fd = -1;
}

/* ---------- TLS ---------- */

static void ssl_error_string(char *out, size_t n, const char *what) {
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

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in, unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  for (unsigned i = 0; i < inlen;) {
    unsigned l = in[i];
    if (i + 1 + l > inlen) break;
    if (l == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
      *out = in + i + 1;
      *outlen = 2;
      return SSL_TLSEXT_ERR_OK;
    }
    i += 1 + l;
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* A TLS context for one identity's material: TLS 1.3 only, AES-GCM suites, ALPN h2, the peer's certificate required. */
static SSL_CTX *make_ctx(int server, const char *chain, const char *key, const char *roots, char *err, size_t errn) {
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) {
    ssl_error_string(err, errn, "SSL_CTX_new");
    return NULL;
  }
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_read_ahead(ctx, 1); /* whole socket reads, not two per record */
  SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  if (SSL_CTX_set_ciphersuites(ctx, HBONE_CIPHERSUITES) != 1) goto fail_ssl;
  if (load_pem_chain(ctx, chain, 0)) {
    ssl_error_string(err, errn, "certificate chain");
    goto fail;
  }
  BIO *kb = BIO_new_mem_buf(key, -1);
  EVP_PKEY *pk = kb ? PEM_read_bio_PrivateKey(kb, NULL, NULL, NULL) : NULL;
  BIO_free(kb);
  if (!pk || SSL_CTX_use_PrivateKey(ctx, pk) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
    EVP_PKEY_free(pk);
    ssl_error_string(err, errn, "private key");
    goto fail;
  }
  EVP_PKEY_free(pk);
  if (load_pem_chain(ctx, roots, 1)) {
    ssl_error_string(err, errn, "roots");
    goto fail;
  }
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
  if (server) {
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  } else if (SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)"\x02h2", 3) != 0) {
    goto fail_ssl;
  }
  return ctx;
fail_ssl:
  ssl_error_string(err, errn, "TLS settings");
fail:
  SSL_CTX_free(ctx);
  return NULL;
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

/*
 * Checks a SPIFFE ID against Istio's shape with the rules of parseSpiffeId (agent/src/identity/spiffe.ts), which the
 * Node data path applies: at most 2048 bytes; "spiffe://"; no query or fragment; exactly <td>/ns/<ns>/sa/<sa>; a trust
 * domain of 1-255 of [a-z0-9._-]; namespace and service account non-empty, of [A-Za-z0-9._-], not "." or "..". When
 * `td` is given, the trust domain must equal it. Returns NULL when valid, else the rule broken. Pure.
 */
static int seg_ok(const char *p, size_t n, int lower_only) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)p[i];
    int ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' || (!lower_only && c >= 'A' && c <= 'Z');
    if (!ok) return 0;
  }
  return 1;
}

static const char *spiffe_check(const char *uri, const char *td) {
  size_t len = strlen(uri);
  if (len > 2048) return "longer than 2048 bytes";
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

/* ---------- streams ---------- */

static void session_update(struct session *s);
static void session_fail(struct session *s, const char *why);
static void session_flush(struct session *s);

static struct stream *stream_new(uint64_t id, struct session *s, int fd) {
  struct stream *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->io.kind = IO_APP;
  st->io.fd = fd;
  st->id = id;
  st->h2id = -1;
  st->s = s;
  st->next_in_session = s->streams;
  s->streams = st;
  pthread_mutex_lock(&G.mu);
  st->next_all = G.all_streams;
  G.all_streams = st;
  pthread_mutex_unlock(&G.mu);
  return st;
}

/* A client stream's one "status" event: the answer's status, or -1 and why no answer will come. */
static void stream_report_status(struct stream *st, int status, const char *why) {
  if (st->status_reported || st->s->server) return;
  st->status_reported = 1;
  ev_begin("status");
  ev_num("stream", (int64_t)st->id);
  ev_num("status", status);
  if (why) ev_str("error", why);
  ev_end();
}

/* Why a client stream that is going away never got an answer. */
static void stream_report_unanswered(struct stream *st, const char *session_error) {
  char why[1300];
  if (session_error && *session_error) {
    snprintf(why, sizeof why, "%s", session_error);
  } else if (st->h2_error == NGHTTP2_REFUSED_STREAM) {
    snprintf(why, sizeof why, "the peer refused the stream (REFUSED_STREAM) before answering the CONNECT");
  } else if (st->h2_error) {
    snprintf(why, sizeof why, "stream reset (HTTP/2 error %u) before the CONNECT was answered", st->h2_error);
  } else if (st->errored) {
    snprintf(why, sizeof why, "stream aborted before the CONNECT was answered");
  } else {
    snprintf(why, sizeof why, "stream closed before the CONNECT was answered");
  }
  stream_report_status(st, -1, why);
}

static void stream_update(struct stream *st) {
  if (st->io.fd < 0) return;
  uint32_t m = 0;
  if (st->relaying && !st->app_eof && st->in.len < APP_BUF) m |= EPOLLIN;
  if (st->out.len) m |= EPOLLOUT;
  io_set(&st->io, m);
}

/*
 * Drops the DATA received for a stream and not written to its app, giving its flow-control credit back: automatic window
 * updates are off, so bytes never handed to the app would otherwise shrink the connection's window for good.
 */
static void stream_drop_out(struct stream *st) {
  struct session *s = st->s;
  if (st->out.len && s->h2) {
    nghttp2_session_consume_connection(s->h2, st->out.len);
    if (!st->h2_closed && st->h2id > 0) nghttp2_session_consume_stream(s->h2, st->h2id, st->out.len);
  }
  buf_free(&st->out);
}

/*
 * Resets the HTTP/2 stream (if open) and closes the app socket with a TCP reset: something failed on one side. The
 * stream object lives on until nghttp2 has closed the stream (on_stream_close), which still refers to it.
 */
static void stream_abort(struct stream *st, uint32_t code) {
  st->errored = 1;
  if (st->h2id > 0 && !st->h2_closed && st->s->h2) nghttp2_submit_rst_stream(st->s->h2, NGHTTP2_FLAG_NONE, st->h2id, code);
  if (st->io.fd >= 0) {
    struct linger l = {1, 0};
    setsockopt(st->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    io_close(&st->io);
  }
  stream_drop_out(st);
  if (st->h2id < 0 || st->h2_closed || !st->s->h2) st->dead = 1;
}

/* A stream is over when HTTP/2 is done with it and every byte for the app was written (or the app is gone). */
static void stream_report_closed(struct stream *st, const char *why);

static void stream_check_done(struct stream *st) {
  if (st->dead) return;
  int h2_done = st->h2_closed || st->h2id < 0;
  if (!h2_done) return;
  if (st->awaiting) {
    /* The agent is still working on its request (dialing the app): it hears of the end now, and the stream is kept
     * until it answers (the answer is then dropped), so what it is working on per session stays bounded. */
    stream_report_closed(st, NULL);
    return;
  }
  if (st->io.fd >= 0 && st->out.len && !st->errored) return;
  if (st->io.fd >= 0) {
    if (st->h2_error || st->errored) {
      struct linger l = {1, 0};
      setsockopt(st->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    }
    io_close(&st->io);
  }
  st->dead = 1;
}

static void stream_write_out(struct stream *st) {
  struct session *s = st->s;
  while (st->out.len && st->io.fd >= 0) {
    ssize_t n = send(st->io.fd, st->out.p + st->out.off, st->out.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf_consume(&st->out, (size_t)n);
      st->bytes_out += (uint64_t)n;
      if (st->h2_closed) st->closed_ms = now_ms(); /* a slow reader is not a stalled one */
      if (s->h2) {
        nghttp2_session_consume_connection(s->h2, (size_t)n);
        if (!st->h2_closed && st->h2id > 0) nghttp2_session_consume_stream(s->h2, st->h2id, (size_t)n);
      }
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    stream_abort(st, NGHTTP2_CONNECT_ERROR);
    return;
  }
  if (!st->out.len && st->peer_eof && !st->app_shut && st->io.fd >= 0) {
    shutdown(st->io.fd, SHUT_WR);
    st->app_shut = 1;
  }
}

/* Room at the end of a stream's `in` buffer (allocated on first use, data moved back to HEADROOM when the end is near). */
static size_t in_room(struct stream *st) {
  struct buf *b = &st->in;
  if (!b->p) {
    b->p = malloc(HEADROOM + APP_BUF);
    if (!b->p) return 0;
    b->cap = HEADROOM + APP_BUF;
    b->off = HEADROOM;
  }
  if (b->off > HEADROOM && b->cap - b->off - b->len < APP_BUF / 4) {
    memmove(b->p + HEADROOM, b->p + b->off, b->len);
    b->off = HEADROOM;
  }
  return b->cap - b->off - b->len;
}

static void in_consume(struct stream *st, size_t n) {
  st->in.off += n;
  st->in.len -= n;
  if (!st->in.len) st->in.off = HEADROOM;
}

static void stream_read_app(struct stream *st) {
  struct session *s = st->s;
  int got = 0;
  while (!st->app_eof && st->in.len < APP_BUF && st->io.fd >= 0) {
    size_t room = in_room(st);
    if (!room) break;
    ssize_t n = recv(st->io.fd, st->in.p + st->in.off + st->in.len, room, MSG_DONTWAIT);
    if (n > 0) {
      st->in.len += (size_t)n;
      st->bytes_in += (uint64_t)n;
      got = 1;
      continue;
    }
    if (n == 0) {
      st->app_eof = 1;
      got = 1;
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) break;
    stream_abort(st, NGHTTP2_CONNECT_ERROR);
    return;
  }
  if (got && st->deferred && s->h2 && st->h2id > 0 && !st->h2_closed) {
    st->deferred = 0;
    nghttp2_session_resume_data(s->h2, st->h2id);
  }
}

/* DATA without a copy: the payload goes from the stream's buffer straight into the TLS write buffer (send_data_cb). */
static ssize_t data_read_cb(nghttp2_session *h2, int32_t sid, uint8_t *out, size_t len, uint32_t *flags, nghttp2_data_source *src, void *ud) {
  (void)h2;
  (void)sid;
  (void)out;
  (void)ud;
  struct stream *st = src->ptr;
  if (!st->relaying || st->errored) {
    st->deferred = 1; /* an errored stream waits for its RST_STREAM to close it */
    return NGHTTP2_ERR_DEFERRED;
  }
  size_t n = st->in.len < len ? st->in.len : len;
  if (n == st->in.len && st->app_eof) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
  } else if (!n) {
    st->deferred = 1;
    return NGHTTP2_ERR_DEFERRED;
  }
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  return (ssize_t)n;
}

static int send_data_cb(nghttp2_session *h2, nghttp2_frame *f, const uint8_t *framehd, size_t length, nghttp2_data_source *src, void *ud) {
  (void)h2;
  struct session *s = ud;
  struct stream *st = src->ptr;
  if (f->data.padlen || length > st->in.len || (length && st->in.off < 9)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  /* The header goes in the consumed bytes (or headroom) just before the payload: one contiguous frame, no copy. */
  char tmp[9];
  char *start = length ? st->in.p + st->in.off - 9 : tmp;
  memcpy(start, framehd, 9);
  size_t total = 9 + length, done = 0;
  if (!s->wbuf.len) {
    /* Nothing queued before it: straight to TLS. What the socket does not take now waits in wbuf (same bytes). */
    while (done < total) {
      int n = SSL_write(s->ssl, start + done, (int)(total - done));
      if (n > 0) {
        done += (size_t)n;
        continue;
      }
      int e = SSL_get_error(s->ssl, n);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) break;
      ERR_clear_error();
      session_fail(s, "TLS write failed");
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  if (done < total && buf_append(&s->wbuf, start + done, total - done)) return NGHTTP2_ERR_CALLBACK_FAILURE;
  in_consume(st, length);
  stream_update(st);
  return 0;
}

/* DATA frames of 64 KiB with their header (four full TLS records), or as much as flow control lets through. */
static ssize_t read_length_cb(nghttp2_session *h2, uint8_t type, int32_t sid, int32_t sw, int32_t cw, uint32_t remote_max, void *ud) {
  (void)h2;
  (void)type;
  (void)sid;
  (void)ud;
  ssize_t n = 4 * 16384 - 9;
  if (n > sw) n = sw;
  if (n > cw) n = cw;
  if ((uint32_t)n > remote_max) n = remote_max;
  return n;
}

/* ---------- sessions ---------- */

static struct session *find_session(uint64_t id) {
  for (struct session *s = G.sessions; s; s = s->next)
    if (s->id == id) return s;
  return NULL;
}

static struct stream *find_stream(struct session *s, int32_t h2id) {
  struct stream *st = s->h2 ? nghttp2_session_get_stream_user_data(s->h2, h2id) : NULL;
  return st && !st->h2_closed ? st : NULL;
}

static void session_fail(struct session *s, const char *why) {
  if (!s->error[0]) {
    size_t n = strlen(why);
    if (n >= sizeof s->error) n = sizeof s->error - 1;
    memcpy(s->error, why, n);
    s->error[n] = 0;
  }
  s->dead = 1;
}

static void session_report_up(struct session *s) {
  ev_begin("up");
  ev_num("session", (int64_t)s->id);
  ev_str("peer", s->peer);
  ev_num("peerNotAfter", s->peer_not_after);
  ev_str("peerSerial", s->peer_serial);
  ev_end();
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  struct session *s = ud;
  if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
    s->ping_sent_ms = 0;
    return 0;
  }
  if (f->hd.type == NGHTTP2_SETTINGS && !(f->hd.flags & NGHTTP2_FLAG_ACK)) {
    if (!s->ready) {
      s->ready = 1;
      s->deadline_ms = 0;
      if (s->server) session_report_up(s);
    }
    ev_begin("settings");
    ev_num("session", (int64_t)s->id);
    ev_num("maxStreams", nghttp2_session_get_remote_settings(h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS));
    ev_end();
    return 0;
  }
  if (f->hd.type == NGHTTP2_GOAWAY) {
    ev_begin("goaway");
    ev_num("session", (int64_t)s->id);
    ev_num("code", f->goaway.error_code);
    ev_end();
    return 0;
  }
  struct stream *st = f->hd.stream_id > 0 ? find_stream(s, f->hd.stream_id) : NULL;
  if (!st) return 0;
  if (f->hd.type == NGHTTP2_HEADERS && !s->server && f->headers.cat == NGHTTP2_HCAT_RESPONSE) {
    stream_report_status(st, st->status, NULL);
    if (st->status == 200) {
      st->relaying = 1;
      stream_read_app(st); /* the app may have written before the answer */
      if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(h2, st->h2id);
      }
      stream_update(st);
    } else {
      nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, st->h2id, NGHTTP2_CANCEL);
    }
  } else if (f->hd.type == NGHTTP2_HEADERS && s->server && f->headers.cat == NGHTTP2_HCAT_REQUEST && !st->fresh) {
    /* Reported once the whole read is processed, if the stream is still open then (session_report_requests). */
    st->fresh = 1;
    *s->fresh_tail = st;
    s->fresh_tail = &st->next_fresh;
  }
  if ((f->hd.type == NGHTTP2_DATA || f->hd.type == NGHTTP2_HEADERS) && (f->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
    st->peer_eof = 1;
    stream_write_out(st);
    stream_update(st);
  }
  return 0;
}

/* Remembers the error code of a GOAWAY nghttp2 sent on its own (a connection error it detected), to end the session with it. */
static int on_frame_send(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)h2;
  struct session *s = ud;
  if (f->hd.type == NGHTTP2_GOAWAY && f->goaway.error_code && !s->goaway_code) s->goaway_code = f->goaway.error_code;
  return 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t sid, const uint8_t *data, size_t len, void *ud) {
  (void)flags;
  struct session *s = ud;
  struct stream *st = find_stream(s, sid);
  if (!st || st->errored || (st->io.fd < 0 && st->answered) || (!s->server && st->status != 200)) {
    nghttp2_session_consume(h2, sid, len);
    return 0;
  }
  size_t done = 0;
  if (!st->out.len && st->relaying) {
    while (done < len) {
      ssize_t n = send(st->io.fd, data + done, len - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        done += (size_t)n;
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      stream_abort(st, NGHTTP2_CONNECT_ERROR);
      nghttp2_session_consume(h2, sid, len);
      return 0;
    }
    if (done) {
      st->bytes_out += done;
      nghttp2_session_consume(h2, sid, done);
    }
  }
  if (done < len) {
    if (buf_append(&st->out, data + done, len - done)) return NGHTTP2_ERR_CALLBACK_FAILURE;
    stream_update(st);
  }
  return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t sid, uint32_t code, void *ud) {
  (void)h2;
  struct session *s = ud;
  struct stream *st = find_stream(s, sid);
  if (!st) return 0;
  st->h2_closed = 1;
  st->h2_error = code;
  st->closed_ms = now_ms();
  if (code) {
    /* Reset by the peer (or by us): unwritten bytes are dropped (their connection credit given back), the app sees a reset. */
    st->errored = 1;
    stream_drop_out(st);
  }
  return 0;
}

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud) {
  (void)h2;
  struct session *s = ud;
  if (f->hd.type != NGHTTP2_HEADERS) return 0;
  if (!s->server || f->headers.cat != NGHTTP2_HCAT_REQUEST) {
    struct stream *st = find_stream(s, f->hd.stream_id);
    if (st) st->header_bytes = 0; /* a new header block (response or trailers): its own limit */
    return 0;
  }
  struct stream *st = stream_new(++G.next_id, s, -1);
  if (!st) return NGHTTP2_ERR_CALLBACK_FAILURE;
  st->h2id = f->hd.stream_id;
  st->reported = 1; /* no "closed" event for a stream the agent never heard of (refused before its request event) */
  s->last_active_ms = now_ms();
  nghttp2_session_set_stream_user_data(s->h2, st->h2id, st);
  return 0;
}

static char *dupn(const uint8_t *p, size_t n) {
  char *d = malloc(n + 1);
  if (d) {
    memcpy(d, p, n);
    d[n] = 0;
  }
  return d;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name, size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *ud) {
  (void)h2;
  (void)flags;
  struct session *s = ud;
  struct stream *st = find_stream(s, f->hd.stream_id);
  if (!st) return 0;
  /*
   * The header list limit we advertise, as HTTP/2 counts it, enforced while decoding: HPACK lets a few bytes on the wire
   * stand for megabytes of headers. Past it the stream is reset (nghttp2 sends RST_STREAM and keeps decoding the rest
   * of the block only for the HPACK state, without calling us), before the agent hears of the request.
   */
  st->header_bytes += nlen + vlen + HEADER_OVERHEAD;
  if (st->header_bytes > (s->server ? SERVER_MAX_HEADER_LIST : CLIENT_MAX_HEADER_LIST)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (!s->server) {
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
      int v = 0;
      for (size_t i = 0; i < vlen && i < 4; i++) v = v * 10 + (value[i] - '0');
      st->status = v;
    }
    return 0;
  }
  if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
    if (vlen > MAX_METHOD) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    free(st->method);
    st->method = dupn(value, vlen);
  } else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) {
    if (vlen > MAX_AUTHORITY) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    free(st->authority);
    st->authority = dupn(value, vlen);
  }
  /* Other headers: the agent reads none of them, so they are only counted. */
  return 0;
}

static nghttp2_session_callbacks *callbacks(void) {
  static nghttp2_session_callbacks *cbs;
  if (cbs) return cbs;
  nghttp2_session_callbacks_new(&cbs);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, read_length_cb);
  nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
  return cbs;
}

/* After the TLS handshake: check ALPN and the peer's identity, then start HTTP/2 with HBONE's settings. */
static int session_established(struct session *s) {
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
  nghttp2_option *opt;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, 100);
  int rc = s->server ? nghttp2_session_server_new2(&s->h2, callbacks(), s, opt) : nghttp2_session_client_new2(&s->h2, callbacks(), s, opt);
  nghttp2_option_del(opt);
  if (rc) {
    session_fail(s, "nghttp2 session");
    return -1;
  }
  nghttp2_settings_entry iv[4];
  size_t n = 0;
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW};
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, MAX_FRAME};
  if (s->server) {
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, SERVER_MAX_STREAMS};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 64 * 1024};
  } else {
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, 16 * 1024};
  }
  nghttp2_submit_settings(s->h2, NGHTTP2_FLAG_NONE, iv, n);
  nghttp2_session_set_local_window_size(s->h2, NGHTTP2_FLAG_NONE, 0, CONNECTION_WINDOW);
  s->up = 1;
  s->last_ping_ms = s->last_active_ms = now_ms();
  /* A client is up once TLS is; a server session once the client's SETTINGS came too (its handshake deadline runs until then). */
  if (!s->server) session_report_up(s);
  return 0;
}

static void client_submit(struct session *s, struct stream *st);

static void session_handshake(struct session *s) {
  int rc = s->server ? SSL_accept(s->ssl) : SSL_connect(s->ssl);
  if (rc == 1) {
    s->handshaking = 0;
    if (session_established(s)) return;
    struct stream *p = s->pending;
    s->pending = NULL;
    while (p) {
      struct stream *next = p->next_in_session;
      p->next_in_session = s->streams;
      s->streams = p;
      if (!p->dead) client_submit(s, p); /* an aborted one stays unsubmitted: reap frees it, nghttp2 never saw it */
      p = next;
    }
    return;
  }
  int e = SSL_get_error(s->ssl, rc);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
  char why[300];
  long vr = SSL_get_verify_result(s->ssl);
  if (vr != X509_V_OK) {
    snprintf(why, sizeof why, "TLS handshake: certificate verify failed: %s", X509_verify_cert_error_string(vr));
    ERR_clear_error();
  } else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
    snprintf(why, sizeof why, "TLS handshake: connection closed by peer");
    ERR_clear_error();
  } else {
    ssl_error_string(why, sizeof why, "TLS handshake");
  }
  session_fail(s, why);
}

/* The GOAWAY code for a session whose input nghttp2 refused: a flood is abuse, a failure of ours internal, the rest protocol errors. */
static uint32_t goaway_code_for(int rv) {
  switch (rv) {
  case NGHTTP2_ERR_FLOODED: return NGHTTP2_ENHANCE_YOUR_CALM;
  case NGHTTP2_ERR_NOMEM:
  case NGHTTP2_ERR_CALLBACK_FAILURE: return NGHTTP2_INTERNAL_ERROR;
  default: return NGHTTP2_PROTOCOL_ERROR;
  }
}

/*
 * The requests received during one read, reported to the agent now that every frame of the read is processed. A stream
 * the peer already reset (HEADERS and RST_STREAM together: rapid reset) or that failed is never reported, so the agent
 * dials nothing for it; past SERVER_MAX_STREAMS requests the agent is still working on, new ones are refused
 * (REFUSED_STREAM), also unreported. Unreported streams are reaped without a "closed" event.
 */
static void session_report_requests(struct session *s) {
  struct stream *st = s->fresh;
  s->fresh = NULL;
  s->fresh_tail = &s->fresh;
  while (st) {
    struct stream *next = st->next_fresh;
    st->next_fresh = NULL;
    st->fresh = 0;
    if (s->dead || st->dead || st->h2_closed || st->errored) {
      /* Gone already: nothing for the agent to do. */
    } else if (s->awaiting >= SERVER_MAX_STREAMS) {
      stream_abort(st, NGHTTP2_REFUSED_STREAM);
    } else {
      ev_begin("request");
      ev_num("session", (int64_t)s->id);
      ev_num("stream", (int64_t)st->id);
      ev_str("method", st->method ? st->method : "");
      ev_str("authority", st->authority ? st->authority : "");
      ev_str("peer", s->peer);
      ev_end();
      st->reported = 0; /* from now on the agent knows this stream: tell it how it ends */
      st->awaiting = 1;
      s->awaiting++;
    }
    st = next;
  }
}

/* Reads and decrypts what the peer sent, feeding HTTP/2; then reports the requests that arrived and are still open. */
static void session_read_frames(struct session *s);

static void session_read(struct session *s) {
  session_read_frames(s);
  if (s->server) session_report_requests(s);
}

static void session_read_frames(struct session *s) {
  static unsigned char rbuf[TLS_READ];
  for (int i = 0; i < 64 && !s->dead; i++) {
    int n = SSL_read(s->ssl, rbuf, sizeof rbuf);
    if (n > 0) {
      ssize_t r = nghttp2_session_mem_recv(s->h2, rbuf, (size_t)n);
      if (r < 0) {
        if (!s->goaway_code) s->goaway_code = goaway_code_for((int)r);
        session_fail(s, nghttp2_strerror((int)r));
        return;
      }
      continue;
    }
    int e = SSL_get_error(s->ssl, n);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) return;
    if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL) {
      ERR_clear_error();
      session_fail(s, "connection closed by peer");
    } else {
      char why[300];
      ssl_error_string(why, sizeof why, "TLS read");
      session_fail(s, why);
    }
    return;
  }
}

/* Serialises pending HTTP/2 frames and writes them through TLS; what the socket does not take waits in wbuf. */
static void session_flush_frames(struct session *s);

static void session_flush(struct session *s) {
  if (s->dead || !s->h2) return;
  session_flush_frames(s);
  if (!s->dead && BIO_wpending(SSL_get_wbio(s->ssl)) > 0) BIO_flush(SSL_get_wbio(s->ssl)); /* EAGAIN: EPOLLOUT */
}

static void session_flush_frames(struct session *s) {
  for (;;) {
    while (s->wbuf.len < TLS_WBUF_FLUSH) {
      const uint8_t *d;
      ssize_t n = nghttp2_session_mem_send(s->h2, &d);
      if (n < 0) {
        session_fail(s, nghttp2_strerror((int)n));
        return;
      }
      if (n == 0) break;
      if (buf_append(&s->wbuf, d, (size_t)n)) {
        session_fail(s, "out of memory");
        return;
      }
    }
    if (!s->wbuf.len) return;
    while (s->wbuf.len) {
      int n = SSL_write(s->ssl, s->wbuf.p + s->wbuf.off, (int)(s->wbuf.len > INT32_MAX ? INT32_MAX : s->wbuf.len));
      if (n > 0) {
        buf_consume(&s->wbuf, (size_t)n);
        continue;
      }
      int e = SSL_get_error(s->ssl, n);
      if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) return;
      ERR_clear_error();
      session_fail(s, "TLS write failed");
      return;
    }
  }
}

static void session_update(struct session *s) {
  if (s->dead) return;
  uint32_t m = EPOLLIN;
  if (s->handshaking) {
    if (SSL_want_write(s->ssl)) m |= EPOLLOUT;
  } else if (s->wbuf.len || BIO_wpending(SSL_get_wbio(s->ssl)) > 0) {
    m |= EPOLLOUT;
  }
  io_set(&s->io, m);
}

static void session_pump(struct session *s) {
  if (s->dead) return;
  if (s->handshaking) {
    session_handshake(s);
    if (s->handshaking || s->dead) {
      session_update(s);
      return;
    }
  }
  session_read(s);
  session_flush(s);
  if (!s->dead && s->graceful && !s->streams && !s->pending) session_fail(s, "closed");
  if (!s->dead && !nghttp2_session_want_read(s->h2) && !nghttp2_session_want_write(s->h2) && !s->wbuf.len) session_fail(s, "closed");
  session_update(s);
}

static void client_submit(struct session *s, struct stream *st) {
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read_cb};
  int32_t sid = s->h2 ? nghttp2_submit_request(s->h2, NULL, st->nva, st->nvlen, &dp, st) : -1;
  free(st->nva);
  free(st->nvstore);
  st->nva = NULL;
  st->nvstore = NULL;
  if (sid < 0) {
    stream_report_status(st, -1, s->h2 ? nghttp2_strerror(sid) : "session not up");
    stream_abort(st, 0);
    return;
  }
  st->h2id = sid;
}

/* ---------- reaping ---------- */

static void stream_free(struct stream *st) {
  pthread_mutex_lock(&G.mu);
  for (struct stream **pp = &G.all_streams; *pp; pp = &(*pp)->next_all) {
    if (*pp == st) {
      *pp = st->next_all;
      break;
    }
  }
  pthread_mutex_unlock(&G.mu);
  io_close(&st->io);
  buf_free(&st->in);
  buf_free(&st->out);
  free(st->method);
  free(st->authority);
  free(st->nva);
  free(st->nvstore);
  free(st);
}

static void stream_report_closed(struct stream *st, const char *why) {
  if (st->reported) return;
  st->reported = 1;
  ev_begin("closed");
  ev_num("stream", (int64_t)st->id);
  ev_num("bytesIn", (int64_t)st->bytes_in);
  ev_num("bytesOut", (int64_t)st->bytes_out);
  ev_num("h2Error", st->h2_error);
  ev_num("errored", st->errored);
  if (why) ev_str("error", why);
  ev_end();
}

static void reap(void) {
  static size_t freed_streams; /* since the last trim */
  static int64_t trimmed_ms;
  int freed = 0;
  for (struct session **sp = &G.sessions; *sp;) {
    struct session *s = *sp;
    /* Streams done on their own, and queued ones aborted before the handshake ended (never submitted). */
    for (int pass = 0; pass < 2; pass++) {
      for (struct stream **pp = pass ? &s->pending : &s->streams; *pp;) {
        struct stream *st = *pp;
        if (!pass) stream_check_done(st);
        if (st->dead) {
          *pp = st->next_in_session;
          if (!s->server) stream_report_unanswered(st, NULL);
          stream_report_closed(st, NULL);
          if (st->awaiting) s->awaiting--; /* closed by the agent before it answered */
          stream_free(st);
          freed_streams++;
          s->last_active_ms = now_ms();
        } else {
          pp = &st->next_in_session;
        }
      }
    }
    if (!s->dead) {
      sp = &s->next;
      continue;
    }
    *sp = s->next;
    for (struct stream *st = s->streams; st; st = st->next_in_session) st->errored = 1; /* no more DATA */
    if (s->h2 && !s->handshaking && s->wbuf.len && s->up) {
      /* Frames the socket did not take yet go first, if it takes them now (best effort, never waiting). */
      int n = SSL_write(s->ssl, s->wbuf.p + s->wbuf.off, (int)(s->wbuf.len > INT32_MAX ? INT32_MAX : s->wbuf.len));
      if (n > 0) buf_consume(&s->wbuf, (size_t)n);
      ERR_clear_error();
    }
    if (s->h2 && !s->handshaking && !s->wbuf.len && s->up) {
      /* Best effort GOAWAY, while the streams still exist (nghttp2 may call back about them): NO_ERROR for an ordinary
       * close, else the code of the connection error (nghttp2's own if it sent one, e.g. for too many resets). */
      nghttp2_session_terminate_session(s->h2, s->goaway_code);
      const uint8_t *d;
      ssize_t n;
      while ((n = nghttp2_session_mem_send(s->h2, &d)) > 0) SSL_write(s->ssl, d, (int)n);
      BIO_flush(SSL_get_wbio(s->ssl));
      ERR_clear_error();
      buf_free(&s->wbuf);
    }
    for (int pass = 0; pass < 2; pass++) {
      struct stream *st = pass ? s->pending : s->streams;
      while (st) {
        struct stream *next = st->next_in_session;
        freed_streams++;
        if (!s->server) stream_report_unanswered(st, s->error[0] ? s->error : "HBONE session closed");
        st->errored = 1;
        if (st->io.fd >= 0) {
          struct linger l = {1, 0};
          setsockopt(st->io.fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
        }
        stream_report_closed(st, s->error);
        stream_free(st);
        st = next;
      }
    }
    ev_begin("sessionClosed");
    ev_num("session", (int64_t)s->id);
    ev_num("wasUp", s->server ? s->ready : s->up);
    ev_num("identityRefused", s->identity_refused);
    ev_num("timedOut", s->timed_out);
    ev_num("goawayCode", s->goaway_code);
    ev_str("error", s->error);
    ev_end();
    if (s->h2) nghttp2_session_del(s->h2);
    if (s->ssl) SSL_free(s->ssl);
    /* Unread bytes at close() make the kernel send a reset, which can destroy the alert we just sent before the peer
     * reads it (a failed handshake leaves the client's Finished unread): read them away first. */
    if (s->io.fd >= 0) {
      char sink[4096];
      for (int i = 0; i < 64 && recv(s->io.fd, sink, sizeof sink, MSG_DONTWAIT) > 0; i++) {
      }
    }
    io_close(&s->io);
    buf_free(&s->wbuf);
    free(s->expected);
    free(s);
    freed++;
  }
  /*
   * After a burst of closes (a flood timed out, a node's pods left) or of streams (a reset storm), hand the freed memory
   * (TLS buffers, stream and nghttp2 state) back to the system; at most once a second for streams.
   */
  int64_t now = freed_streams >= TRIM_AFTER_STREAMS || freed >= 64 ? now_ms() : 0;
  if (freed >= 64 || (now && now - trimmed_ms >= 1000)) {
    malloc_trim(0);
    freed_streams = 0;
    trimmed_ms = now;
  }
}

/* ---------- commands ---------- */

static SSL_CTX *find_ctx(uint64_t id) {
  SSL_CTX *ctx = NULL;
  pthread_mutex_lock(&G.mu);
  for (struct ctx_entry *c = G.ctxs; c; c = c->next)
    if (c->id == id) {
      ctx = c->ctx;
      SSL_CTX_up_ref(ctx);
      break;
    }
  pthread_mutex_unlock(&G.mu);
  return ctx;
}

static void cmd_session(struct cmd *c, int server) {
  struct session *s = calloc(1, sizeof *s);
  SSL_CTX *ctx = c->ctx; /* referenced by the API call, so freeing the context since then does not matter */
  c->ctx = NULL;
  if (!s || !ctx) {
    if (ctx) SSL_CTX_free(ctx);
    close(c->fd);
    free(s);
    ev_begin("sessionClosed");
    ev_num("session", (int64_t)c->id);
    ev_num("wasUp", 0);
    ev_str("error", ctx ? "out of memory" : "unknown TLS context");
    ev_end();
    return;
  }
  s->id = c->id;
  s->server = server;
  s->fresh_tail = &s->fresh;
  s->io.kind = IO_SESSION;
  s->io.fd = c->fd;
  s->expected = c->a;
  c->a = NULL;
  s->handshaking = 1;
  if (G.handshake_ms > 0) s->deadline_ms = now_ms() + G.handshake_ms;
  s->ssl = SSL_new(ctx);
  SSL_CTX_free(ctx);
  s->next = G.sessions;
  G.sessions = s;
  fcntl(s->io.fd, F_SETFL, fcntl(s->io.fd, F_GETFL) | O_NONBLOCK);
  int nodelay = 1;
  setsockopt(s->io.fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
  /*
   * Reads straight from the socket; writes through a 64 KiB buffer flushed at the end of every flush, so several TLS
   * records leave in one write() (each write pushes segments through the whole path between the pods).
   */
  BIO *sock = s->ssl ? BIO_new_socket(s->io.fd, BIO_NOCLOSE) : NULL;
  BIO *wbuf = sock ? BIO_new(BIO_f_buffer()) : NULL;
  if (!wbuf || !BIO_set_write_buffer_size(wbuf, 64 * 1024) || !BIO_up_ref(sock)) {
    BIO_free(wbuf);
    BIO_free(sock);
    session_fail(s, "SSL_new");
    return;
  }
  BIO_push(wbuf, sock);
  SSL_set_bio(s->ssl, sock, wbuf);
  if (server) {
    /* Nothing to do before the ClientHello: wait for it, so a client that never sends one costs no TLS read buffer. */
    io_set(&s->io, EPOLLIN);
    return;
  }
  session_pump(s);
}

/* "name\nvalue\n..." into an nghttp2 header list after :method CONNECT and :authority. */
static int build_nva(struct stream *st, const char *authority, char *headers) {
  size_t cap = 2;
  for (const char *p = headers; p && *p; p++)
    if (*p == '\n') cap++;
  st->nva = calloc(cap, sizeof *st->nva);
  if (!st->nva) return -1;
  st->nvstore = headers;
  size_t n = 0;
  st->nva[n++] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  st->nva[n++] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority), NGHTTP2_NV_FLAG_NO_COPY_NAME};
  char *p = headers;
  while (p && *p && n < cap) {
    char *name = p, *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = 0;
    char *value = nl + 1, *vl = strchr(value, '\n');
    if (vl) *vl = 0;
    st->nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE};
    p = vl ? vl + 1 : NULL;
  }
  st->nvlen = n;
  return 0;
}

/* A client stream that cannot be made: its status and closed events, and its app socket reset. */
static void refuse_client_stream(struct cmd *c, const char *why) {
  ev_begin("status");
  ev_num("stream", (int64_t)c->id);
  ev_num("status", -1);
  ev_str("error", why);
  ev_end();
  ev_begin("closed");
  ev_num("stream", (int64_t)c->id);
  ev_num("bytesIn", 0);
  ev_num("bytesOut", 0);
  ev_num("h2Error", 0);
  ev_num("errored", 1);
  ev_str("error", why);
  ev_end();
  if (c->fd >= 0) {
    struct linger l = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(c->fd);
  }
}

static void cmd_client_stream(struct cmd *c) {
  struct session *s = find_session(c->ref);
  if (c->fd >= 0) fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
  if (!s || s->dead || s->server) {
    refuse_client_stream(c, s && s->dead && s->error[0] ? s->error : s && s->server ? "not a client session" : "HBONE session closed");
    return;
  }
  struct stream *st = stream_new(c->id, s, c->fd);
  if (!st) {
    refuse_client_stream(c, "out of memory");
    return;
  }
  int nodelay = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
  /* stream_new linked it into s->streams; a session still handshaking keeps it on the pending list instead. */
  if (build_nva(st, c->a, c->b)) {
    stream_abort(st, 0);
    return;
  }
  c->b = NULL;
  st->authority = c->a;
  c->a = NULL;
  st->nva[1].value = (uint8_t *)st->authority;
  if (s->handshaking) {
    s->streams = st->next_in_session;
    st->next_in_session = s->pending;
    s->pending = st;
    return;
  }
  client_submit(s, st);
  session_flush(s);
  session_update(s);
}

static struct stream *find_stream_any(uint64_t id) {
  for (struct session *s = G.sessions; s; s = s->next) {
    for (struct stream *st = s->streams; st; st = st->next_in_session)
      if (st->id == id) return st;
    for (struct stream *st = s->pending; st; st = st->next_in_session)
      if (st->id == id) return st;
  }
  return NULL;
}

static void cmd_answer(struct cmd *c) {
  struct stream *st = find_stream_any(c->id);
  if (st && st->awaiting) {
    st->awaiting = 0; /* the agent's work on it is over, whether the stream is still open or not */
    st->s->awaiting--;
  }
  /* Only a server stream's request is answered, once, while HTTP/2 still has the stream; anything else is ignored. */
  if (!st || !st->s->server || !st->s->h2 || st->h2id <= 0 || st->dead || st->h2_closed || st->answered) {
    if (c->fd >= 0) close(c->fd);
    return;
  }
  struct session *s = st->s;
  st->answered = 1;
  char status[8];
  snprintf(status, sizeof status, "%d", c->status);
  nghttp2_nv nva[] = {{(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE}};
  st->status = c->status;
  if (c->status == 200 && c->fd >= 0) {
    st->io.fd = c->fd;
    fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
    int nodelay = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    st->relaying = 1;
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read_cb};
    nghttp2_submit_response(s->h2, st->h2id, nva, 1, &dp);
    stream_write_out(st); /* DATA that came before the answer */
  } else {
    if (c->fd >= 0) close(c->fd);
    stream_drop_out(st); /* DATA that came before a refusal will never be read: give its credit back */
    nghttp2_submit_response(s->h2, st->h2id, nva, 1, NULL);
  }
  stream_update(st);
  session_flush(s);
  session_update(s);
}

static void run_cmd(struct cmd *c) {
  switch (c->kind) {
  case CMD_CLIENT_SESSION: cmd_session(c, 0); break;
  case CMD_SERVER_SESSION: cmd_session(c, 1); break;
  case CMD_CLIENT_STREAM: cmd_client_stream(c); break;
  case CMD_ANSWER: cmd_answer(c); break;
  case CMD_CLOSE_STREAM: {
    struct stream *st = find_stream_any(c->id);
    if (st && !st->dead) {
      stream_abort(st, NGHTTP2_CANCEL);
      if (st->s->h2 && !st->s->handshaking) {
        session_flush(st->s);
        session_update(st->s);
      }
    }
    break;
  }
  case CMD_CLOSE_SESSION: {
    struct session *s = find_session(c->id);
    if (!s || s->dead) break;
    if (c->flag && s->up) {
      s->graceful = 1;
      nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2), NGHTTP2_NO_ERROR, NULL, 0);
      session_pump(s);
    } else {
      session_fail(s, "closed by the agent");
    }
    break;
  }
  case CMD_STOP: G.stop = 1; break;
  }
}

static void cmd_free(struct cmd *c) {
  if (c->ctx) SSL_CTX_free(c->ctx);
  free(c->a);
  free(c->b);
  free(c);
}

static void drain_cmds(void) {
  uint64_t v;
  if (read(G.wakefd, &v, sizeof v) < 0 && errno != EAGAIN) return;
  pthread_mutex_lock(&G.mu);
  struct cmd *c = G.cmds;
  G.cmds = G.cmds_tail = NULL;
  pthread_mutex_unlock(&G.mu);
  while (c) {
    struct cmd *next = c->next;
    run_cmd(c);
    cmd_free(c);
    c = next;
  }
}

static void keepalive_tick(void) {
  uint64_t v;
  if (read(G.timerfd, &v, sizeof v) < 0) return;
  int64_t now = now_ms();
  int linger = G.linger_ms, idle = G.idle_ms;
  for (struct session *s = G.sessions; s; s = s->next) {
    if (s->dead) continue;
    /* A TLS + HTTP/2 handshake that has not finished by its deadline (a silent or slow client holds memory and an fd). */
    if (s->deadline_ms && !s->ready && now >= s->deadline_ms) {
      char why[120];
      snprintf(why, sizeof why, "HBONE handshake did not finish within %d ms", (int)G.handshake_ms);
      s->timed_out = 1;
      session_fail(s, why);
      continue;
    }
    if (!s->up) continue;
    /* Streams closed in order whose app stopped reading: their unread bytes hold connection credit; bounded. */
    if (linger > 0) {
      for (struct stream *st = s->streams; st; st = st->next_in_session) {
        if (!st->dead && st->h2_closed && st->out.len && st->closed_ms && now - st->closed_ms >= linger) stream_abort(st, 0);
      }
    }
    /* A server session without streams for the idle limit is closed (GOAWAY); clients close theirs sooner (5 min). */
    if (idle > 0 && s->server && s->ready && !s->graceful && !s->streams && now - s->last_active_ms >= idle) {
      s->graceful = 1;
      nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2), NGHTTP2_NO_ERROR, NULL, 0);
      session_pump(s);
      continue;
    }
    if (s->ping_sent_ms && now - s->ping_sent_ms >= KEEPALIVE_TIMEOUT_MS) {
      session_fail(s, "HBONE peer did not answer a PING");
      continue;
    }
    if (!s->ping_sent_ms && now - s->last_ping_ms >= KEEPALIVE_INTERVAL_MS) {
      s->last_ping_ms = now;
      s->ping_sent_ms = now;
      nghttp2_submit_ping(s->h2, NGHTTP2_FLAG_NONE, NULL);
    }
    session_flush(s);
    session_update(s);
  }
}

static void *loop(void *arg) {
  (void)arg;
  struct epoll_event evs[64];
  while (!G.stop) {
    int n = epoll_wait(G.epfd, evs, 64, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (int i = 0; i < n; i++) {
      struct io *io = evs[i].data.ptr;
      uint32_t e = evs[i].events;
      switch (io->kind) {
      case IO_WAKE: drain_cmds(); break;
      case IO_TIMER: keepalive_tick(); break;
      case IO_EVENTS:
        if (e & EPOLLOUT) ev_flush();
        if (e & (EPOLLIN | EPOLLHUP)) {
          char tmp[64];
          ssize_t r = recv(G.evfd, tmp, sizeof tmp, MSG_DONTWAIT);
          if (r == 0) G.stop = 1; /* the agent closed its end */
        }
        break;
      case IO_SESSION: {
        struct session *s = (struct session *)io;
        session_pump(s);
        break;
      }
      case IO_APP: {
        struct stream *st = (struct stream *)io;
        if (st->dead) break;
        struct session *s = st->s;
        if (e & EPOLLOUT) stream_write_out(st);
        if (!st->dead && (e & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
          if (e & EPOLLERR) {
            stream_abort(st, NGHTTP2_CONNECT_ERROR);
          } else if (st->relaying) {
            stream_read_app(st);
          } else {
            /* Not relaying yet (server side before the answer): nothing to read. */
          }
        }
        if (!st->dead) stream_update(st);
        if (!s->dead && s->h2 && !s->handshaking) {
          session_flush(s);
          session_update(s);
        }
        break;
      }
      }
    }
    /* Streams whose app socket drained may now be complete; sessions may need a last flush. */
    for (struct session *s = G.sessions; s; s = s->next) {
      if (s->dead || !s->h2 || s->handshaking) continue;
      /* A read that stopped at its per-turn bound may leave records OpenSSL already took off the socket (read-ahead):
       * epoll will not report them, so they are processed now rather than when the peer happens to send more. */
      if (SSL_has_pending(s->ssl)) session_pump(s);
      if (s->dead) continue;
      for (struct stream *st = s->streams; st; st = st->next_in_session) stream_check_done(st);
      if (s->graceful && !s->streams) session_fail(s, "closed");
    }
    reap();
    ev_flush();
  }
  /* Stopped: close everything. */
  for (struct session *s = G.sessions; s; s = s->next) session_fail(s, "data plane stopped");
  reap();
  return NULL;
}

/* ---------- API (called from the agent's thread) ----------
 *
 * Contract (every call, in any order, on ids that exist, are gone or never were, is memory-safe; the harness in
 * agent/native/test/relay-harness.c plays such orders under ASan/UBSan):
 * - A call never blocks on the loop: it queues a command, which the loop runs in call order.
 * - Every session id returned gets exactly one "sessionClosed" event (preceded by "up" if it came up).
 * - Every client stream id returned gets exactly one "status" event (the answer's status, or -1 with an error: session
 *   failed, stream reset or refused by the peer before answering, aborted, oversized) and then exactly one "closed".
 * - A server stream gets exactly one "closed" event once its "request" event was sent; one reset before that (header
 *   limits, or by the peer in the same read as its HEADERS) is never reported. The library keeps a reported stream until
 *   it is answered or closed by the agent, even once "closed" was sent, and refuses (REFUSED_STREAM, unreported) new
 *   requests of a session that has SERVER_MAX_STREAMS such streams: answer every request, late ones included. Answer each request once (ahb_answer); later answers, answers to client streams and
 *   answers to streams already gone are ignored (their fd is closed).
 * - ahb_close_stream and ahb_close_session on ids that are gone are ignored. A stream closed while its session is still
 *   handshaking is dropped at once and never sent; a session closed while handshaking fails its queued streams.
 * - Memory: a stream is freed only once nghttp2 no longer refers to it (never submitted, or after on_stream_close),
 *   or with its whole session; nothing is freed inside an nghttp2 callback.
 */

static void enqueue(struct cmd *c) {
  pthread_mutex_lock(&G.mu);
  if (G.cmds_tail) G.cmds_tail->next = c;
  else G.cmds = c;
  G.cmds_tail = c;
  pthread_mutex_unlock(&G.mu);
  uint64_t one = 1;
  if (write(G.wakefd, &one, sizeof one) < 0) { /* eventfd cannot overflow here */
  }
}

static struct cmd *cmd_new(enum cmd_kind kind) {
  struct cmd *c = calloc(1, sizeof *c);
  if (c) {
    c->kind = kind;
    c->fd = -1;
  }
  return c;
}

static char *sdup(const char *s) { return strdup(s ? s : ""); }

/* The last error of a call that returned -1 or 0. */
const char *ahb_last_error(void) { return G.err; }

/** Starts the loop thread; returns the agent's end of the event socket (JSON lines), or -1. */
int ahb_start(void) {
  if (G.running) {
    snprintf(G.err, sizeof G.err, "already started");
    return -1;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) goto fail;
  G.evfd = sv[0];
  fcntl(G.evfd, F_SETFL, fcntl(G.evfd, F_GETFL) | O_NONBLOCK);
  int sz = 4 * 1024 * 1024;
  setsockopt(G.evfd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  G.epfd = epoll_create1(EPOLL_CLOEXEC);
  G.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  G.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (G.epfd < 0 || G.wakefd < 0 || G.timerfd < 0) goto fail;
  struct itimerspec ts = {{1, 0}, {1, 0}};
  timerfd_settime(G.timerfd, 0, &ts, NULL);
  G.wake_io = (struct io){IO_WAKE, G.wakefd, 0};
  G.timer_io = (struct io){IO_TIMER, G.timerfd, 0};
  G.ev_io = (struct io){IO_EVENTS, G.evfd, 0};
  io_set(&G.wake_io, EPOLLIN);
  io_set(&G.timer_io, EPOLLIN);
  io_set(&G.ev_io, EPOLLIN);
  G.stop = 0;
  if (pthread_create(&G.thread, NULL, loop, NULL)) goto fail;
  G.running = 1;
  return sv[1];
fail:
  snprintf(G.err, sizeof G.err, "start: %s", strerror(errno));
  return -1;
}

/**
 * Limits, in ms (0 = none): the TLS + HTTP/2 handshake deadline of new sessions; how long a server session may stay
 * without streams; how long a stream closed in order may hold DATA its app does not read. Call before sessions start.
 */
void ahb_set_limits(int handshake_ms, int idle_ms, int linger_ms) {
  G.handshake_ms = handshake_ms;
  G.idle_ms = idle_ms;
  G.linger_ms = linger_ms;
}

/** The SPIFFE rule of the server side (exported for tests): NULL when `uri` is a valid ID in `td` (any, if NULL). */
const char *ahb_spiffe_check(const char *uri, const char *td) { return spiffe_check(uri ? uri : "", td && *td ? td : NULL); }

/** Stops the loop (closing every session and stream) and waits for it. */
void ahb_stop(void) {
  if (!G.running) return;
  struct cmd *c = cmd_new(CMD_STOP);
  if (c) enqueue(c);
  pthread_join(G.thread, NULL);
  G.running = 0;
  /* Commands queued after the stop was taken: their fds and contexts are released here. */
  pthread_mutex_lock(&G.mu);
  struct cmd *left = G.cmds;
  G.cmds = G.cmds_tail = NULL;
  pthread_mutex_unlock(&G.mu);
  while (left) {
    struct cmd *next = left->next;
    if (left->fd >= 0) close(left->fd);
    cmd_free(left);
    left = next;
  }
  close(G.epfd);
  close(G.wakefd);
  close(G.timerfd);
  close(G.evfd);
  G.epfd = G.wakefd = G.timerfd = G.evfd = -1;
  buf_free(&G.events);
  pthread_mutex_lock(&G.mu);
  while (G.ctxs) {
    struct ctx_entry *e = G.ctxs;
    G.ctxs = e->next;
    SSL_CTX_free(e->ctx);
    free(e);
  }
  pthread_mutex_unlock(&G.mu);
}

/** A TLS context for one identity's material (server != 0: the 15008 side). Returns its id, or 0 (ahb_last_error). */
uint64_t ahb_ctx_new(int server, const char *chain_pem, const char *key_pem, const char *roots_pem) {
  SSL_CTX *ctx = make_ctx(server, chain_pem, key_pem, roots_pem, G.err, sizeof G.err);
  if (!ctx) return 0;
  struct ctx_entry *e = calloc(1, sizeof *e);
  if (!e) {
    SSL_CTX_free(ctx);
    return 0;
  }
  e->ctx = ctx;
  e->id = ++G.next_id;
  pthread_mutex_lock(&G.mu);
  e->next = G.ctxs;
  G.ctxs = e;
  pthread_mutex_unlock(&G.mu);
  return e->id;
}

/**
 * Forgets a TLS context (after a certificate renewal). Sessions made with it, and ahb_*_session calls already made with
 * it whose session the loop has not started yet, keep it until they close; later calls with the id fail their session
 * ("unknown TLS context").
 */
void ahb_ctx_free(uint64_t id) {
  pthread_mutex_lock(&G.mu);
  for (struct ctx_entry **pp = &G.ctxs; *pp; pp = &(*pp)->next) {
    if ((*pp)->id == id) {
      struct ctx_entry *e = *pp;
      *pp = e->next;
      SSL_CTX_free(e->ctx);
      free(e);
      break;
    }
  }
  pthread_mutex_unlock(&G.mu);
}

static uint64_t session_cmd(enum cmd_kind kind, uint64_t ctx, int fd, const char *expected) {
  struct cmd *c = cmd_new(kind);
  if (!c) {
    if (fd >= 0) close(fd);
    return 0;
  }
  c->id = ++G.next_id;
  c->ref = ctx;
  c->ctx = find_ctx(ctx); /* now, on the caller's thread: NULL makes the loop report "unknown TLS context" */
  c->fd = fd;
  c->a = sdup(expected);
  uint64_t id = c->id;
  enqueue(c);
  return id;
}

/**
 * A client HBONE session over a connected TCP fd (owned from now on); the peer must be `expected_id`. The TLS context is
 * taken when this is called. Returns the session id (0: out of memory, fd closed).
 */
uint64_t ahb_client_session(uint64_t ctx, int fd, const char *expected_id) { return session_cmd(CMD_CLIENT_SESSION, ctx, fd, expected_id); }

/** A server HBONE session over an accepted TCP fd (owned from now on); clients must be in `trust_domain`. */
uint64_t ahb_server_session(uint64_t ctx, int fd, const char *trust_domain) { return session_cmd(CMD_SERVER_SESSION, ctx, fd, trust_domain); }

/**
 * A CONNECT stream on a client session relaying app socket `fd` (owned from now on). headers: "name\nvalue\n...".
 * Queued while the session handshakes, submitted when it is up. Returns the stream id (0: out of memory, fd closed).
 */
uint64_t ahb_client_stream(uint64_t session, int fd, const char *authority, const char *headers) {
  struct cmd *c = cmd_new(CMD_CLIENT_STREAM);
  if (!c) {
    if (fd >= 0) close(fd);
    return 0;
  }
  c->id = ++G.next_id;
  c->ref = session;
  c->fd = fd;
  c->a = sdup(authority);
  c->b = sdup(headers);
  uint64_t id = c->id;
  enqueue(c);
  return id;
}

/** Answers a server stream's request: 200 with the upstream app socket `fd` (owned), or another status (fd -1). */
void ahb_answer(uint64_t stream, int status, int fd) {
  struct cmd *c = cmd_new(CMD_ANSWER);
  if (!c) {
    if (fd >= 0) close(fd);
    return;
  }
  c->id = stream;
  c->status = status;
  c->fd = fd;
  enqueue(c);
}

/** Resets a stream (policy change, or the agent gave up on it): the app socket gets a reset, the peer RST_STREAM. */
void ahb_close_stream(uint64_t stream) {
  struct cmd *c = cmd_new(CMD_CLOSE_STREAM);
  if (!c) return;
  c->id = stream;
  enqueue(c);
}

/** Closes a session: graceful (GOAWAY, open streams finish) or at once. */
void ahb_close_session(uint64_t session, int graceful) {
  struct cmd *c = cmd_new(CMD_CLOSE_SESSION);
  if (!c) return;
  c->id = session;
  c->flag = graceful;
  enqueue(c);
}

/** Live byte counters of a stream: out[0] read from its app socket, out[1] written to it. Returns 0, or -1 if gone. */
int ahb_stream_bytes(uint64_t stream, uint64_t *out) {
  int rc = -1;
  pthread_mutex_lock(&G.mu);
  for (struct stream *st = G.all_streams; st; st = st->next_all) {
    if (st->id == stream) {
      out[0] = st->bytes_in;
      out[1] = st->bytes_out;
      rc = 0;
      break;
    }
  }
  pthread_mutex_unlock(&G.mu);
  return rc;
}
