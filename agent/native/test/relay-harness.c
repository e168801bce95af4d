/*
 * ASan/UBSan harness of the native HBONE relay (the files of agent/native/hbone-relay/ linked in, with its internal
 * header so the checks can see its stream list): a client and a server session of the relay talk to each other in one
 * process over socketpairs, with certificates made at run time, and scenarios drive the relay's own API (ahb_*) the way
 * the agent does and in orders it does not. Every scenario checks the events' contract; the sanitizers check memory.
 * Run by scripts/asan-relay.sh. One file past 500 lines on purpose: its scenarios share the event log, the certificates
 * and the raw HTTP/2 client, and it is built as one unit with the relay.
 */
#include "../hbone-relay/relay.h"
#include "../hbone-relay/ahb.h"

#include <dirent.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define TD "cluster.local"
#define CLIENT_ID "spiffe://" TD "/ns/app/sa/client"
#define SERVER_ID "spiffe://" TD "/ns/app/sa/server"
#define WAIT_MS 5000
/* server_max_streams of the settings the scenarios run with (the rapid-reset scenario fills it). */
#define MAX_STREAMS 200

/*
 * The settings most scenarios run with: the agent's defaults (agent/src/hbone/settings.ts and tls.ts), copied here as a
 * fixture; scenarios that need other limits restart the relay with a changed copy (relay_restart).
 */
static const struct ahb_settings base_cfg = {
    .stream_window = 4 << 20,
    .connection_window = 16 << 20,
    .max_frame_size = 1 << 20,
    .server_max_header_list = 64 << 10,
    .client_max_header_list = 16 << 10,
    .server_max_streams = MAX_STREAMS,
    .peer_max_streams_before_settings = 100,
    .max_method = 32,
    .max_authority = 1024,
    .keepalive_interval_ms = 10000,
    .keepalive_timeout_ms = 20000,
    .handshake_timeout_ms = 10000,
    .idle_timeout_ms = 600000,
    .unread_linger_ms = 30000,
    .ciphersuites = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256",
    .alpn = "h2",
};

static const char *scenario = "setup";

#define CHECK(cond, ...)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      fprintf(stderr, "relay-harness: FAIL [%s] %s:%d: ", scenario, __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                                        \
      fprintf(stderr, "\n");                                                               \
      exit(1);                                                                             \
    }                                                                                      \
  } while (0)

/* ---------- certificates (a root and two SPIFFE leaves, made with OpenSSL at run time) ---------- */

struct pem {
  char *chain, *key;
};

static char *bio_string(BIO *b) {
  char *p;
  long n = BIO_get_mem_data(b, &p);
  char *s = malloc((size_t)n + 1);
  CHECK(s, "out of memory");
  memcpy(s, p, (size_t)n);
  s[n] = 0;
  BIO_free(b);
  return s;
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value) {
  X509V3_CTX v;
  X509V3_set_ctx(&v, issuer, x, NULL, NULL, 0);
  X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v, nid, value);
  CHECK(e && X509_add_ext(x, e, -1), "extension %d=%s", nid, value);
  X509_EXTENSION_free(e);
}

/* A certificate for `key`, signed by `signer` (itself when NULL: a root); `uri` is the SPIFFE ID of a leaf. */
static X509 *make_cert(EVP_PKEY *key, X509 *issuer, EVP_PKEY *signer, const char *uri, long serial) {
  X509 *x = X509_new();
  CHECK(x, "X509_new");
  X509_set_version(x, 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x), serial);
  X509_gmtime_adj(X509_getm_notBefore(x), -300);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, key);
  if (!uri) X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC, (const unsigned char *)"relay harness root", -1, -1, 0);
  X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
  if (uri) {
    char san[300];
    snprintf(san, sizeof san, "URI:%s", uri);
    add_ext(x, issuer, NID_basic_constraints, "critical,CA:FALSE");
    add_ext(x, issuer, NID_key_usage, "critical,digitalSignature,keyEncipherment");
    add_ext(x, issuer, NID_ext_key_usage, "serverAuth,clientAuth");
    add_ext(x, issuer, NID_subject_alt_name, san);
  } else {
    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
  }
  CHECK(X509_sign(x, signer ? signer : key, EVP_sha256()) > 0, "X509_sign");
  return x;
}

static char *cert_pem(X509 *x) {
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_X509(b, x);
  return bio_string(b);
}

static struct pem make_leaf(X509 *root, EVP_PKEY *root_key, const char *uri, long serial) {
  EVP_PKEY *k = EVP_EC_gen("P-256");
  CHECK(k, "EC key");
  X509 *x = make_cert(k, root, root_key, uri, serial);
  BIO *b = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
  struct pem p = {cert_pem(x), bio_string(b)};
  X509_free(x);
  EVP_PKEY_free(k);
  return p;
}

/* ---------- events ---------- */

struct event {
  char ev[16];
  int64_t session, stream, status, wasUp, timedOut, identityRefused, errored, h2Error, retryFd, connectFailed;
  int64_t listener, fd, srcPort, dstPort, gone;
  char authority[64], src[48], dst[48];
  bool used;
};

/* Fixed storage: pointers to events stay valid while more arrive. */
#define MAX_EVENTS (1 << 17)
static int evfd = -1;
static struct event *evs;
static size_t nevs;
static char linebuf[1 << 16];
static size_t linelen;

static int64_t field_num(const char *line, const char *key) {
  char pat[40];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(line, pat);
  return p ? strtoll(p + strlen(pat), NULL, 10) : -999;
}

static void field_str(const char *line, const char *key, char *out, size_t n) {
  char pat[40];
  snprintf(pat, sizeof pat, "\"%s\":\"", key);
  const char *p = strstr(line, pat);
  out[0] = 0;
  if (!p) return;
  p += strlen(pat);
  size_t i = 0;
  while (p[i] && p[i] != '"' && i + 1 < n) {
    out[i] = p[i];
    i++;
  }
  out[i] = 0;
}

static void add_event(const char *line) {
  if (!evs) evs = calloc(MAX_EVENTS, sizeof *evs);
  CHECK(evs && nevs < MAX_EVENTS, "more than %d events", MAX_EVENTS);
  struct event *e = &evs[nevs++];
  memset(e, 0, sizeof *e);
  field_str(line, "ev", e->ev, sizeof e->ev);
  e->session = field_num(line, "session");
  e->stream = field_num(line, "stream");
  e->status = field_num(line, "status");
  e->wasUp = field_num(line, "wasUp");
  e->timedOut = field_num(line, "timedOut");
  e->identityRefused = field_num(line, "identityRefused");
  e->errored = field_num(line, "errored");
  e->h2Error = field_num(line, "h2Error");
  e->retryFd = field_num(line, "retryFd"); /* -999: none */
  e->connectFailed = field_num(line, "connectFailed"); /* -999: none */
  field_str(line, "authority", e->authority, sizeof e->authority);
  e->listener = field_num(line, "listener");
  e->fd = field_num(line, "fd");
  e->srcPort = field_num(line, "srcPort");
  e->dstPort = field_num(line, "dstPort");
  e->gone = field_num(line, "gone") == 1;
  field_str(line, "src", e->src, sizeof e->src);
  field_str(line, "dst", e->dst, sizeof e->dst);
  CHECK(e->ev[0], "event without a name: %s", line);
}

/* Reads what the loop reported, waiting at most ms for the first byte. */
static void pump_events(int ms) {
  struct pollfd p = {evfd, POLLIN, 0};
  if (poll(&p, 1, ms) <= 0) return;
  char tmp[8192];
  ssize_t n = recv(evfd, tmp, sizeof tmp, MSG_DONTWAIT);
  CHECK(n > 0, "event socket closed");
  for (ssize_t i = 0; i < n; i++) {
    if (tmp[i] == '\n') {
      linebuf[linelen] = 0;
      add_event(linebuf);
      linelen = 0;
    } else {
      CHECK(linelen + 1 < sizeof linebuf, "event line too long");
      linebuf[linelen++] = tmp[i];
    }
  }
}

static struct event *find_event(const char *ev, uint64_t session, uint64_t stream) {
  for (size_t i = 0; i < nevs; i++) {
    struct event *e = &evs[i];
    if (strcmp(e->ev, ev) == 0 && (!session || e->session == (int64_t)session) && (!stream || e->stream == (int64_t)stream)) return e;
  }
  return NULL;
}

static size_t count_events(const char *ev, uint64_t session, uint64_t stream) {
  size_t n = 0;
  for (size_t i = 0; i < nevs; i++)
    if (strcmp(evs[i].ev, ev) == 0 && (!session || evs[i].session == (int64_t)session) && (!stream || evs[i].stream == (int64_t)stream)) n++;
  return n;
}

static struct event *wait_event(const char *ev, uint64_t session, uint64_t stream, int ms) {
  int64_t end = now_ms() + ms;
  for (;;) {
    struct event *e = find_event(ev, session, stream);
    if (e) return e;
    int64_t left = end - now_ms();
    if (left <= 0) return NULL;
    pump_events((int)(left > 50 ? 50 : left));
  }
}

static struct event *must_event(const char *ev, uint64_t session, uint64_t stream) {
  struct event *e = wait_event(ev, session, stream, WAIT_MS);
  CHECK(e, "no \"%s\" event (session %llu, stream %llu) within %d ms", ev, (unsigned long long)session, (unsigned long long)stream, WAIT_MS);
  return e;
}

/* The next request on a server session not taken yet. */
static struct event *next_request(uint64_t session, int ms) {
  int64_t end = now_ms() + ms;
  for (;;) {
    for (size_t i = 0; i < nevs; i++) {
      struct event *e = &evs[i];
      if (!e->used && strcmp(e->ev, "request") == 0 && e->session == (int64_t)session) {
        e->used = true;
        return e;
      }
    }
    int64_t left = end - now_ms();
    if (left <= 0) return NULL;
    pump_events((int)(left > 50 ? 50 : left));
  }
}

/* Lets the loop run for ms, collecting its events. */
static void settle(int ms) {
  int64_t end = now_ms() + ms;
  for (int64_t left; (left = end - now_ms()) > 0;) pump_events((int)left);
}

/* ---------- the relay's contract ---------- */

static uint64_t *client_streams;
static size_t nclient, capclient;

static void note_client_stream(uint64_t id) {
  if (nclient == capclient) {
    capclient = capclient ? capclient * 2 : 256;
    client_streams = realloc(client_streams, capclient * sizeof *client_streams);
    CHECK(client_streams, "out of memory");
  }
  client_streams[nclient++] = id;
}

static size_t live_streams(void) {
  size_t n = 0;
  pthread_mutex_lock(&relay.mu);
  for (struct stream *st = relay.all_streams; st; st = st->next_all) n++;
  pthread_mutex_unlock(&relay.mu);
  return n;
}

/*
 * Every client stream ever opened got exactly one "status" and exactly one "closed" event, status first, and every server
 * stream the agent heard of (a "request") exactly one "closed"; the library holds no stream any more.
 */
static void check_contract(void) {
  settle(100);
  for (size_t i = 0; i < nclient; i++) {
    uint64_t id = client_streams[i];
    size_t st = count_events("status", 0, id), cl = count_events("closed", 0, id);
    CHECK(st == 1, "client stream %llu got %zu status events (want 1)", (unsigned long long)id, st);
    CHECK(cl == 1, "client stream %llu got %zu closed events (want 1)", (unsigned long long)id, cl);
    CHECK(find_event("status", 0, id) < find_event("closed", 0, id), "client stream %llu: closed before status", (unsigned long long)id);
  }
  for (size_t i = 0; i < nevs; i++) {
    if (strcmp(evs[i].ev, "request") != 0) continue;
    size_t cl = count_events("closed", 0, (uint64_t)evs[i].stream);
    CHECK(cl == 1, "server stream %lld got %zu closed events (want 1)", (long long)evs[i].stream, cl);
  }
  int64_t end = now_ms() + WAIT_MS;
  while (live_streams() && now_ms() < end) settle(20);
  CHECK(live_streams() == 0, "%zu streams still held by the library", live_streams());
}

/* ---------- sockets ---------- */

static void pair(int sv[2]) {
  CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair: %s", strerror(errno));
  struct timeval tv = {5, 0};
  for (int i = 0; i < 2; i++) {
    setsockopt(sv[i], SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(sv[i], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  }
}

static void fill(unsigned char *p, size_t n, unsigned seed) {
  for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(i * 131 + seed);
}

static void send_all(int fd, const void *d, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t w = send(fd, (const char *)d + done, n - done, MSG_NOSIGNAL);
    CHECK(w > 0, "send: %s", w < 0 ? strerror(errno) : "0");
    done += (size_t)w;
  }
}

/* The peer closed: EOF or a reset (a unix socket has no RST; the relay's SO_LINGER 0 close reads as EOF). */
static void expect_eof(int fd) {
  char c;
  ssize_t r = recv(fd, &c, 1, 0);
  CHECK(r == 0 || (r < 0 && errno == ECONNRESET), "expected EOF, got %zd (%s)", r, r < 0 ? strerror(errno) : "data");
}

/* A handed-back fd is the other end of the app's socket `app`, with nothing of it read: a byte written at `app` is the
 * first byte read from it. */
static void expect_same_connection(int app, int handed) {
  CHECK(write(app, "k", 1) == 1, "write to the app end");
  char kb[4] = {0};
  struct pollfd kp = {handed, POLLIN, 0};
  CHECK(poll(&kp, 1, WAIT_MS) == 1 && read(handed, kb, sizeof kb) == 1 && kb[0] == 'k', "the handed-back fd is the app's connection, unread");
}

/* Moves n bytes one way through an established stream and checks them, writing and reading in turn (any size). */
static void transfer(int from, int to, size_t n, unsigned seed) {
  unsigned char *a = malloc(n), *b = malloc(n);
  CHECK(a && b, "out of memory");
  fill(a, n, seed);
  size_t sent = 0, got = 0;
  int64_t end = now_ms() + 10000;
  while (got < n) {
    CHECK(now_ms() < end, "transfer stalled: %zu of %zu bytes sent, %zu received", sent, n, got);
    struct pollfd p[2] = {{to, POLLIN, 0}, {from, sent < n ? POLLOUT : 0, 0}};
    poll(p, 2, 100);
    if (sent < n) {
      ssize_t w = send(from, a + sent, n - sent > 65536 ? 65536 : n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      CHECK(w > 0 || errno == EAGAIN, "send: %s", strerror(errno));
      if (w > 0) sent += (size_t)w;
    }
    ssize_t r = recv(to, b + got, n - got, MSG_DONTWAIT);
    CHECK(r != 0, "EOF after %zu of %zu bytes", got, n);
    CHECK(r > 0 || errno == EAGAIN, "recv: %s", strerror(errno));
    if (r > 0) got += (size_t)r;
  }
  CHECK(memcmp(a, b, n) == 0, "%zu bytes arrived altered", n);
  free(a);
  free(b);
}

/* ---------- sessions and streams ---------- */

static uint64_t cctx, sctx, wrongctx;
static struct pem client_pem, server_pem, other_pem;
static char *root_pem;

/* Stops the relay if it runs (reading the events it sent up to its end), without starting it again. */
static void relay_stop(void) {
  if (evfd < 0) return;
  ahb_stop();
  for (;;) {
    struct pollfd p = {evfd, POLLIN, 0};
    if (poll(&p, 1, WAIT_MS) <= 0) break;
    char tmp[8192];
    ssize_t n = recv(evfd, tmp, sizeof tmp, MSG_DONTWAIT);
    if (n <= 0) break;
    for (ssize_t i = 0; i < n; i++) {
      if (tmp[i] != '\n') {
        CHECK(linelen + 1 < sizeof linebuf, "event line too long");
        linebuf[linelen++] = tmp[i];
        continue;
      }
      linebuf[linelen] = 0;
      add_event(linebuf);
      linelen = 0;
    }
  }
  close(evfd);
  evfd = -1;
  linelen = 0; /* a line the relay never finished sending is not glued to the next relay's first */
}

/*
 * (Re)starts the relay with `cfg` and makes the scenarios' TLS contexts again (ahb_stop frees them). Sessions must be
 * closed first: ahb_stop reports none of them. Ids keep growing across restarts, so earlier events stay unambiguous.
 */
static void relay_restart(const struct ahb_settings *cfg) {
  relay_stop();
  evfd = ahb_start(cfg);
  CHECK(evfd >= 0, "ahb_start: %s", ahb_last_error());
  cctx = ahb_ctx_new(0, client_pem.chain, client_pem.key, root_pem);
  sctx = ahb_ctx_new(1, server_pem.chain, server_pem.key, root_pem);
  wrongctx = ahb_ctx_new(0, other_pem.chain, other_pem.key, root_pem);
  CHECK(cctx && sctx && wrongctx, "ahb_ctx_new: %s", ahb_last_error());
}

struct conn {
  uint64_t c, s;
  int cfd, sfd; /* the server end, until a server session takes it */
};

static struct conn conn_open(bool start_server) {
  int sv[2];
  pair(sv);
  struct conn k = {0, 0, -1, sv[1]};
  k.c = ahb_client_session(cctx, sv[0], SERVER_ID);
  CHECK(k.c, "ahb_client_session: %s", ahb_last_error());
  if (start_server) {
    k.s = ahb_server_session(sctx, sv[1], TD);
    k.sfd = -1;
  }
  return k;
}

static void conn_start_server(struct conn *k) {
  k->s = ahb_server_session(sctx, k->sfd, TD);
  k->sfd = -1;
}

static void conn_wait_up(struct conn *k) {
  must_event("up", k->c, 0);
  must_event("up", k->s, 0);
}

static void conn_close(struct conn *k) {
  ahb_close_session(k->c, 0);
  if (k->s) ahb_close_session(k->s, 0);
  must_event("sessionClosed", k->c, 0);
  if (k->s) must_event("sessionClosed", k->s, 0);
  if (k->sfd >= 0) close(k->sfd);
}

struct flow {
  uint64_t cst, sst;
  int app, up; /* the harness's ends: the client's app socket and the server's upstream socket */
};

static uint64_t stream_open(struct conn *k, const char *authority, const char *headers, int *app) {
  int ap[2];
  pair(ap);
  uint64_t id = ahb_client_stream(k->c, ap[1], authority, headers);
  CHECK(id, "ahb_client_stream");
  note_client_stream(id);
  *app = ap[0];
  return id;
}

/* A CONNECT answered `status` by the server side (200: with an upstream socket). */
static struct flow flow_open(struct conn *k, const char *authority, int status) {
  struct flow f = {0, 0, -1, -1};
  f.cst = stream_open(k, authority, "forwarded\nfor=\"10.0.0.9:4000\"\n", &f.app);
  struct event *r = next_request(k->s, WAIT_MS);
  CHECK(r, "no request for %s", authority);
  CHECK(strcmp(r->authority, authority) == 0, "request for %s, want %s", r->authority, authority);
  f.sst = (uint64_t)r->stream;
  int up[2] = {-1, -1};
  if (status == 200) pair(up);
  ahb_answer(f.sst, status, up[1]);
  f.up = up[0];
  struct event *s = must_event("status", 0, f.cst);
  CHECK(s->status == status, "status %lld, want %d", (long long)s->status, status);
  return f;
}

static void flow_close_fds(struct flow *f) {
  if (f->app >= 0) close(f->app);
  if (f->up >= 0) close(f->up);
  f->app = f->up = -1;
}

/* ---------- scenarios ---------- */

/* CONNECT answered 200, bytes both ways (small and 1 MiB), half-closes in both directions, clean ends. */
static void s_connect_data(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  struct flow f = flow_open(&k, "10.0.0.2:80", 200);
  transfer(f.app, f.up, 5, 1);
  transfer(f.up, f.app, 5, 2);
  transfer(f.app, f.up, 1 << 20, 3);
  transfer(f.up, f.app, 1 << 20, 4);
  shutdown(f.app, SHUT_WR);
  expect_eof(f.up);
  transfer(f.up, f.app, 1000, 5); /* half-closed: the other way still flows */
  shutdown(f.up, SHUT_WR);
  expect_eof(f.app);
  struct event *c = must_event("closed", 0, f.cst), *s = must_event("closed", 0, f.sst);
  CHECK(!c->errored && !c->h2Error && !s->errored && !s->h2Error, "a clean end was reported as an error");
  flow_close_fds(&f);
  /* Many streams on one connection, opened back to back. */
  struct flow many[20];
  for (int i = 0; i < 20; i++) {
    char a[32];
    snprintf(a, sizeof a, "10.0.1.%d:80", i);
    many[i] = flow_open(&k, a, 200);
  }
  for (int i = 0; i < 20; i++) transfer(many[i].app, many[i].up, 4096, (unsigned)i);
  for (int i = 0; i < 20; i++) flow_close_fds(&many[i]);
  for (int i = 0; i < 20; i++) must_event("closed", 0, many[i].cst);
  conn_close(&k);
}

/* Refusals: 401, 403, 503 end the stream with that status and nothing relayed. */
static void s_non_200(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  int statuses[] = {401, 403, 503, 400};
  for (int i = 0; i < 4; i++) {
    struct flow f = flow_open(&k, "10.0.0.3:80", statuses[i]);
    must_event("closed", 0, f.cst);
    must_event("closed", 0, f.sst);
    expect_eof(f.app);
    flow_close_fds(&f);
  }
  /* Bytes the app sent before a refusal are dropped (their credit given back). */
  struct flow f = {0, 0, -1, -1};
  f.cst = stream_open(&k, "10.0.0.3:81", "", &f.app);
  struct event *r = next_request(k.s, WAIT_MS);
  CHECK(r, "no request");
  f.sst = (uint64_t)r->stream;
  ahb_answer(f.sst, 403, -1);
  must_event("closed", 0, f.cst);
  flow_close_fds(&f);
  /* The connection is still good. */
  struct flow ok = flow_open(&k, "10.0.0.3:82", 200);
  transfer(ok.app, ok.up, 70000, 9);
  flow_close_fds(&ok);
  conn_close(&k);
}

/* A loopback TCP listener (backlog `backlog`) and its address; the port is the kernel's. Loopback only. */
static int tcp_listener(int backlog, struct sockaddr_in *addr) {
  int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(l >= 0, "socket: %s", strerror(errno));
  *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  CHECK(bind(l, (struct sockaddr *)addr, sizeof *addr) == 0 && listen(l, backlog) == 0, "listen: %s", strerror(errno));
  socklen_t len = sizeof *addr;
  getsockname(l, (struct sockaddr *)addr, &len);
  return l;
}

/* A non-blocking socket whose connect to `addr` was started (what the agent's startDial hands to ahb_answer_connect). */
static int connect_started(const struct sockaddr_in *addr) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  CHECK(s >= 0, "socket: %s", strerror(errno));
  int rc = connect(s, (const struct sockaddr *)addr, sizeof *addr);
  CHECK(rc == 0 || errno == EINPROGRESS, "connect: %s", strerror(errno));
  return s;
}

/* "listenerError" events of one listener, with gone == `gone`. */
static size_t count_listener_errors(uint64_t listener, int gone) {
  size_t n = 0;
  for (size_t i = 0; i < nevs; i++)
    if (strcmp(evs[i].ev, "listenerError") == 0 && evs[i].listener == (int64_t)listener && evs[i].gone == gone) n++;
  return n;
}

/* The peer of `fd` closed or reset the connection (EOF or ECONNRESET within 5 s), as a listener's end must. */
static void expect_ended(int fd, const char *what) {
  struct timeval tv = {5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  char b;
  ssize_t n = recv(fd, &b, 1, 0);
  CHECK(n == 0 || (n < 0 && errno == ECONNRESET), "%s: not ended (%s)", what, n < 0 ? strerror(errno) : "a byte came");
}

/* A blocking TCP connection to `addr` (a test's listener), connected (it waits in the listener's queue). */
static int tcp_client(const struct sockaddr_in *addr) {
  int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(c >= 0 && connect(c, (const struct sockaddr *)addr, sizeof *addr) == 0, "connect: %s", strerror(errno));
  return c;
}

/* The "accepted" events of one listener so far. */
static size_t accepted_of(uint64_t listener) {
  size_t n = 0;
  for (size_t i = 0; i < nevs; i++)
    if (strcmp(evs[i].ev, "accepted") == 0 && evs[i].listener == (int64_t)listener) n++;
  return n;
}

/* The accepted fd whose client is `client` (its local port is the event's srcPort), or -1. */
static int accepted_fd_of(uint64_t listener, int client) {
  struct sockaddr_in me;
  socklen_t len = sizeof me;
  CHECK(getsockname(client, (struct sockaddr *)&me, &len) == 0, "getsockname: %s", strerror(errno));
  for (size_t i = 0; i < nevs; i++)
    if (strcmp(evs[i].ev, "accepted") == 0 && evs[i].listener == (int64_t)listener && evs[i].srcPort == ntohs(me.sin_port)) return (int)evs[i].fd;
  return -1;
}

/* Outbound listeners: connections reported with their fd and addresses, never more than the credits granted; misuse. */
static void s_listen(void) {
  struct sockaddr_in addr;
  int l = tcp_listener(64, &addr); /* blocking: the library makes it non-blocking */
  CHECK(ahb_listen(dup(l), 0, 0) == 0, "a listener without credits was taken");
  CHECK(ahb_listen(dup(l), 0, MAX_ACCEPT_CREDITS + 1) == 0, "a listener with too many credits was taken");
  uint64_t id = ahb_listen(l, 0, 3);
  CHECK(id, "ahb_listen: %s", ahb_last_error());
  enum { N = 5 };
  int clients[N];
  for (int i = 0; i < N; i++) {
    clients[i] = tcp_client(&addr);
  }
  settle(200);
  CHECK(accepted_of(id) == 3, "%zu connections reported with 3 credits", accepted_of(id));
  ahb_listen_credit(id, 1);
  ahb_listen_credit(id, 0);       /* ignored */
  ahb_listen_credit(id + 999, 5); /* unknown: ignored */
  settle(200);
  CHECK(accepted_of(id) == 4, "%zu connections reported after one more credit", accepted_of(id));
  ahb_listen_credit(id, 1 << 30); /* held at MAX_ACCEPT_CREDITS */
  settle(200);
  CHECK(accepted_of(id) == N, "%zu connections reported of %d", accepted_of(id), N);
  for (size_t i = 0; i < nevs; i++) {
    struct event *e = &evs[i];
    if (strcmp(e->ev, "accepted") || e->listener != (int64_t)id) continue;
    CHECK(strcmp(e->src, "127.0.0.1") == 0 && strcmp(e->dst, "127.0.0.1") == 0 && e->dstPort == ntohs(addr.sin_port) && e->srcPort > 0,
          "accepted from %s:%lld to %s:%lld", e->src, (long long)e->srcPort, e->dst, (long long)e->dstPort);
  }
  /* Each fd is its client's connection, unread: the first bytes arrive there. */
  for (int i = 0; i < N; i++) {
    int fd = accepted_fd_of(id, clients[i]);
    CHECK(fd >= 0, "client %d's connection was not reported", i);
    send_all(clients[i], "hello", 5);
    char got[5];
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    CHECK(recv(fd, got, 5, MSG_WAITALL) == 5 && memcmp(got, "hello", 5) == 0, "client %d's bytes did not arrive on its fd", i);
    close(fd);
    close(clients[i]);
  }
  /* Stopped: the listening socket is closed, so a new connection is refused; unknown ids are ignored. */
  ahb_unlisten(id);
  ahb_unlisten(id);
  ahb_unlisten(id + 999);
  settle(100);
  int late = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  CHECK(connect(late, (struct sockaddr *)&addr, sizeof addr) != 0 && errno == ECONNREFUSED, "a stopped listener still took a connection");
  close(late);
  /* A listener left open with a connection waiting in its queue (no credits left) is closed by ahb_stop. */
  int l2 = tcp_listener(8, &addr);
  uint64_t id2 = ahb_listen(l2, 0, 1);
  CHECK(id2, "ahb_listen: %s", ahb_last_error());
  int waiting[2];
  for (int i = 0; i < 2; i++) {
    waiting[i] = tcp_client(&addr);
  }
  CHECK(wait_event("accepted", 0, 0, WAIT_MS), "no connection reported");
  settle(100);
  CHECK(accepted_of(id2) == 1, "%zu connections reported with 1 credit", accepted_of(id2));
  int taken = accepted_fd_of(id2, waiting[0]) >= 0 ? 0 : 1;
  close(accepted_fd_of(id2, waiting[taken]));
  relay_restart(&base_cfg);
  expect_ended(waiting[1 - taken], "the connection left in the queue of a listener closed by ahb_stop");
  for (int i = 0; i < 2; i++) close(waiting[i]);
  /* A socket that is not a listener (or not of the listener's family) is refused with "gone"; its fd is closed. */
  int plain = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  uint64_t id3 = ahb_listen(plain, 0, 4);
  CHECK(id3, "ahb_listen: %s", ahb_last_error());
  struct event *e = wait_event("listenerError", 0, 0, WAIT_MS);
  CHECK(e && e->listener == (int64_t)id3 && e->gone == 1, "a socket that is not listening was not refused as gone");
  int l6 = tcp_listener(8, &addr);
  uint64_t id4 = ahb_listen(l6, 1, 4); /* an IPv4 listener said to be IPv6 */
  CHECK(id4, "ahb_listen: %s", ahb_last_error());
  settle(100);
  CHECK(count_listener_errors(id4, 1) == 1, "a listener of the wrong family was not refused as gone");
  /* A listening socket shut down under the listener (as by another agent holding it): accept() fails, and the listener
   * rests a second at a time instead of spinning on level-triggered readiness. */
  int l5 = tcp_listener(8, &addr);
  int mine = dup(l5);
  uint64_t id5 = ahb_listen(l5, 0, 4);
  CHECK(id5, "ahb_listen: %s", ahb_last_error());
  settle(50);
  CHECK(shutdown(mine, SHUT_RDWR) == 0, "shutdown: %s", strerror(errno));
  settle(2500);
  size_t rests = count_listener_errors(id5, 0);
  CHECK(rests >= 1 && rests <= 4, "a listener whose accept() fails reported %zu rests in 2.5 s (want 1 .. 4: one a second)", rests);
  close(mine);
  ahb_unlisten(id5);
}

/*
 * Listeners stopped while their connections are being accepted, 50 times (an epoll event of the same loop turn may still
 * point to a listener just stopped: ASan checks it is not freed under it), then fds in events the agent never received
 * whole: with a tiny event socket buffer, ahb_stop leaves the rest of them to the library, which must reset them.
 */
static void s_listen_races(void) {
  for (int round = 0; round < 50; round++) {
    struct sockaddr_in addr;
    int l = tcp_listener(16, &addr);
    uint64_t id = ahb_listen(l, 0, 64);
    CHECK(id, "ahb_listen: %s", ahb_last_error());
    int c[3];
    for (int i = 0; i < 3; i++) c[i] = tcp_client(&addr);
    if (round % 2) settle(1);
    ahb_unlisten(id);
    settle(20);
    for (int i = 0; i < 3; i++) {
      int fd = accepted_fd_of(id, c[i]);
      if (fd >= 0) close(fd);
      close(c[i]);
    }
  }
  int one = 1;
  setsockopt(relay.evfd, SOL_SOCKET, SO_SNDBUF, &one, sizeof one); /* the kernel's least: a few event lines */
  struct sockaddr_in addr;
  int l = tcp_listener(128, &addr);
  uint64_t id = ahb_listen(l, 0, 100);
  CHECK(id, "ahb_listen: %s", ahb_last_error());
  enum { N = 100 };
  int c[N];
  for (int i = 0; i < N; i++) {
    c[i] = tcp_client(&addr);
  }
  usleep(300 * 1000); /* the loop accepts them all; the events are not read, so most stay queued in the library */
  relay_restart(&base_cfg); /* reads what reached the socket: those fds are the harness's to close */
  size_t received = accepted_of(id);
  CHECK(received < N, "all %d events reached the agent: the scenario did not leave any unsent", N);
  for (int i = 0; i < N; i++) {
    int fd = accepted_fd_of(id, c[i]);
    if (fd >= 0) close(fd);
  }
  for (int i = 0; i < N; i++) {
    expect_ended(c[i], "a connection whose event the agent never received whole");
    close(c[i]);
  }
}

/* ahb_answer_connect: 200 once connected and the bytes flow; 503 with connectFailed when refused; a stream closed by
 * the agent, or reset by the client, while its connect is in flight; misuse (answers after it, to streams gone). */
static void s_answer_connect(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  struct sockaddr_in addr;
  int l = tcp_listener(16, &addr);
  /* Connected: 200, and the bytes flow both ways through the accepted socket. */
  int app;
  uint64_t cst = stream_open(&k, "10.0.0.9:80", "", &app);
  struct event *r = next_request(k.s, WAIT_MS);
  CHECK(r, "no request");
  uint64_t sst = (uint64_t)r->stream;
  ahb_answer_connect(sst, connect_started(&addr), 5000);
  CHECK(must_event("status", 0, cst)->status == 200, "a connected upstream was not answered 200");
  int up = accept(l, NULL, NULL);
  CHECK(up >= 0, "accept: %s", strerror(errno));
  ahb_answer(sst, 503, -1);                             /* a second answer: ignored */
  ahb_answer_connect(sst, connect_started(&addr), 5000); /* and another: ignored, its socket closed */
  transfer(app, up, 70000, 3);
  transfer(up, app, 70000, 4);
  close(app);
  close(up);
  must_event("closed", 0, cst);
  CHECK(must_event("closed", 0, sst)->connectFailed == -999, "a connected stream's end says its connect failed");
  /* Refused (a port nobody listens on any more): 503, and the server stream's end names the failed connect. */
  struct sockaddr_in gone;
  close(tcp_listener(1, &gone));
  cst = stream_open(&k, "10.0.0.9:81", "", &app);
  r = next_request(k.s, WAIT_MS);
  CHECK(r, "no request");
  sst = (uint64_t)r->stream;
  ahb_answer_connect(sst, connect_started(&gone), 5000);
  CHECK(must_event("status", 0, cst)->status == 503, "a refused connect was not answered 503");
  CHECK(must_event("closed", 0, sst)->connectFailed == 1, "a refused connect is not named in the stream's end");
  must_event("closed", 0, cst);
  close(app);
  /* In flight (a listener with a full queue drops the SYN), then closed by the agent, then reset by the client. */
  struct sockaddr_in full;
  int lf = tcp_listener(0, &full);
  int fillers[3];
  for (int i = 0; i < 3; i++) fillers[i] = connect_started(&full);
  settle(50);
  for (int round = 0; round < 2; round++) {
    cst = stream_open(&k, round ? "10.0.0.9:83" : "10.0.0.9:82", "", &app);
    r = next_request(k.s, WAIT_MS);
    CHECK(r, "no request");
    sst = (uint64_t)r->stream;
    ahb_answer_connect(sst, connect_started(&full), 30000);
    settle(50);
    ahb_close_stream(round ? cst : sst);
    struct event *s = must_event("status", 0, cst);
    CHECK(s->status < 0, "status %lld for a stream closed while its connect was in flight", (long long)s->status);
    CHECK(must_event("closed", 0, sst)->connectFailed == -999, "a closed stream's end blamed its connect");
    must_event("closed", 0, cst);
    close(app);
  }
  ahb_answer_connect(sst, connect_started(&addr), 5000); /* to a stream that is gone: ignored, its socket closed */
  for (int i = 0; i < 3; i++) close(fillers[i]);
  close(lf);
  close(l);
  /* The connection is still good. */
  struct flow ok = flow_open(&k, "10.0.0.9:84", 200);
  transfer(ok.app, ok.up, 70000, 5);
  flow_close_fds(&ok);
  conn_close(&k);
}

/* Resets from either side on established streams, with data in flight. */
static void s_reset(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  struct flow a = flow_open(&k, "10.0.0.4:80", 200);
  transfer(a.app, a.up, 1000, 1);
  ahb_close_stream(a.cst);
  struct event *e = must_event("closed", 0, a.sst);
  CHECK(e->errored || e->h2Error, "a reset from the client was reported as a clean end");
  expect_eof(a.up);
  must_event("closed", 0, a.cst);
  ahb_close_stream(a.cst); /* again, on a stream that is gone: ignored */
  flow_close_fds(&a);
  struct flow b = flow_open(&k, "10.0.0.4:81", 200);
  unsigned char junk[200000];
  fill(junk, sizeof junk, 7);
  send_all(b.up, junk, sizeof junk); /* in flight towards the client app, which does not read */
  ahb_close_stream(b.sst);
  e = must_event("closed", 0, b.cst);
  CHECK(e->errored || e->h2Error, "a reset from the server was reported as a clean end");
  flow_close_fds(&b);
  /* The app closing with unread bytes and the upstream closing mid-stream. */
  struct flow c = flow_open(&k, "10.0.0.4:82", 200);
  send_all(c.up, junk, 1000);
  close(c.app);
  c.app = -1;
  must_event("closed", 0, c.sst);
  flow_close_fds(&c);
  struct flow ok = flow_open(&k, "10.0.0.4:83", 200);
  transfer(ok.up, ok.app, 1 << 16, 3);
  flow_close_fds(&ok);
  conn_close(&k);
}

/* The peer resets the stream, or the whole connection, before answering the CONNECT: the client stream still settles. */
static void s_reset_before_answer(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  int app;
  uint64_t cst = stream_open(&k, "10.0.0.5:80", "", &app);
  struct event *r = next_request(k.s, WAIT_MS);
  CHECK(r, "no request");
  ahb_close_stream((uint64_t)r->stream);
  struct event *s = must_event("status", 0, cst);
  CHECK(s->status < 0, "status %lld for a stream the peer reset", (long long)s->status);
  must_event("closed", 0, cst);
  close(app);
  /* The connection goes away before the answer. */
  uint64_t cst2 = stream_open(&k, "10.0.0.5:81", "", &app);
  CHECK(next_request(k.s, WAIT_MS), "no request");
  ahb_close_session(k.s, 0);
  s = must_event("status", 0, cst2);
  CHECK(s->status < 0, "status %lld for a stream whose connection closed", (long long)s->status);
  must_event("closed", 0, cst2);
  must_event("sessionClosed", k.c, 0);
  close(app);
  /* A graceful GOAWAY from the server while a request waits, then the server answers it. */
  struct conn g = conn_open(true);
  conn_wait_up(&g);
  uint64_t cst3 = stream_open(&g, "10.0.0.5:82", "", &app);
  r = next_request(g.s, WAIT_MS);
  CHECK(r, "no request");
  ahb_close_session(g.s, 1);
  int up[2];
  pair(up);
  ahb_answer((uint64_t)r->stream, 200, up[1]);
  s = must_event("status", 0, cst3);
  CHECK(s->status == 200, "status %lld after GOAWAY", (long long)s->status);
  transfer(app, up[0], 1000, 1);
  /* A new stream after the GOAWAY is refused by the client side itself, and settles, handing the untouched app socket
   * back ("retryFd"): it is the same connection as the app's end, and nothing of it was read. */
  int app2;
  uint64_t cst4 = stream_open(&g, "10.0.0.5:83", "", &app2);
  s = must_event("status", 0, cst4);
  CHECK(s->status < 0, "status %lld for a stream opened after GOAWAY", (long long)s->status);
  CHECK(s->retryFd >= 0, "a stream refused by a GOAWAY hands its app socket back (retryFd %lld)", (long long)s->retryFd);
  must_event("closed", 0, cst4);
  expect_same_connection(app2, (int)s->retryFd);
  close((int)s->retryFd);
  close(app);
  close(up[0]);
  close(app2);
  must_event("sessionClosed", g.s, 0);
  must_event("sessionClosed", g.c, 0);
  conn_close(&k);
}

/* Issue 11 item 8: streams queued while the session handshakes, aborted (or otherwise misused) before it finishes. */
static void s_queued_abort(void) {
  struct conn k = conn_open(false);
  int a_app, b_app, c_app;
  uint64_t a = stream_open(&k, "10.0.0.6:1", "", &a_app);
  ahb_close_stream(a);
  ahb_close_stream(a);
  uint64_t b = stream_open(&k, "10.0.0.6:2", "", &b_app);
  uint64_t c = stream_open(&k, "10.0.0.6:3", "", &c_app);
  int fake[2];
  pair(fake);
  ahb_answer(c, 200, fake[1]); /* answering a client stream is a misuse: ignored, the fd closed */
  ahb_answer(a, 200, -1);
  settle(50);
  must_event("closed", 0, a); /* an aborted queued stream is dropped at once */
  conn_start_server(&k);
  conn_wait_up(&k);
  /* Only b and c are submitted; a never reaches the server. Answer whatever comes. */
  struct flow fb = {b, 0, b_app, -1}, fc = {c, 0, c_app, -1};
  for (int i = 0; i < 2; i++) {
    struct event *r = next_request(k.s, WAIT_MS);
    CHECK(r, "request %d of 2 missing", i + 1);
    CHECK(strcmp(r->authority, "10.0.0.6:1") != 0, "the aborted queued stream was submitted");
    struct flow *f = strcmp(r->authority, "10.0.0.6:2") == 0 ? &fb : &fc;
    f->sst = (uint64_t)r->stream;
    int up[2];
    pair(up);
    ahb_answer(f->sst, 200, up[1]);
    f->up = up[0];
  }
  CHECK(must_event("status", 0, b)->status == 200 && must_event("status", 0, c)->status == 200, "queued streams not answered 200");
  CHECK(must_event("status", 0, a)->status < 0, "the aborted stream got a status other than -1");
  settle(100);
  CHECK(!next_request(k.s, 0), "an extra request reached the server");
  transfer(fb.app, fb.up, 50000, 1);
  transfer(fc.up, fc.app, 50000, 2);
  expect_eof(fake[0]);
  close(fake[0]);
  close(a_app);
  flow_close_fds(&fb);
  flow_close_fds(&fc);
  /* Abort after the handshake started but before it finished, several times over, with the server racing it. */
  for (int round = 0; round < 12; round++) {
    struct conn r = conn_open(false);
    int x_app, y_app;
    uint64_t x = stream_open(&r, "10.0.0.6:10", "", &x_app);
    conn_start_server(&r);
    if (round % 3) usleep((useconds_t)(round * 150));
    ahb_close_stream(x);
    uint64_t y = stream_open(&r, "10.0.0.6:11", "", &y_app);
    if (round % 2) ahb_close_stream(y);
    conn_wait_up(&r);
    for (struct event *q; (q = next_request(r.s, 100));) ahb_answer((uint64_t)q->stream, round % 4 ? 200 : 503, -1);
    must_event("closed", 0, x);
    conn_close(&r);
    must_event("closed", 0, y);
    close(x_app);
    close(y_app);
  }
  /* Queued streams when the session is closed before its handshake ends, at once or gracefully. */
  for (int graceful = 0; graceful < 2; graceful++) {
    struct conn q = conn_open(false);
    int p_app;
    uint64_t p = stream_open(&q, "10.0.0.6:20", "", &p_app);
    ahb_close_session(q.c, graceful);
    ahb_close_stream(p);
    CHECK(must_event("status", 0, p)->status < 0, "queued stream of a closed session");
    must_event("closed", 0, p);
    must_event("sessionClosed", q.c, 0);
    close(p_app);
    close(q.sfd);
  }
  /* A stream on a session id that is gone, or never was. */
  int z_app;
  struct conn gone = {k.c, 0, -1, -1};
  conn_close(&k);
  for (int never = 0; never < 2; never++) {
    if (never) gone.c = 999999;
    uint64_t z = stream_open(&gone, never ? "10.0.0.6:31" : "10.0.0.6:30", "", &z_app);
    struct event *zs = must_event("status", 0, z);
    CHECK(zs->status < 0, "stream on a %s session: status %lld", never ? "never made" : "closed", (long long)zs->status);
    /* Nothing was sent: the app socket comes back to the caller, unread, and is the caller's to close. */
    CHECK(zs->retryFd >= 0, "stream on a %s session: no retryFd", never ? "never made" : "closed");
    expect_same_connection(z_app, (int)zs->retryFd);
    must_event("closed", 0, z);
    close((int)zs->retryFd);
    close(z_app);
  }
}

/* Closing sessions (at once, gracefully, from either side) while streams are open and carrying bytes. */
static void s_session_close(void) {
  for (int side = 0; side < 2; side++) {
    struct conn k = conn_open(true);
    conn_wait_up(&k);
    struct flow f[3];
    for (int i = 0; i < 3; i++) f[i] = flow_open(&k, "10.0.0.7:80", 200);
    unsigned char junk[100000];
    fill(junk, sizeof junk, 3);
    send_all(f[0].app, junk, sizeof junk);
    send_all(f[1].up, junk, sizeof junk);
    ahb_close_session(side ? k.s : k.c, 0);
    for (int i = 0; i < 3; i++) {
      must_event("closed", 0, f[i].cst);
      must_event("closed", 0, f[i].sst);
      flow_close_fds(&f[i]);
    }
    must_event("sessionClosed", k.c, 0);
    must_event("sessionClosed", k.s, 0);
    ahb_close_session(k.c, 1); /* already gone: ignored */
  }
  /* Graceful: open streams finish, then the session ends. */
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  struct flow f = flow_open(&k, "10.0.0.7:81", 200);
  ahb_close_session(k.c, 1);
  transfer(f.app, f.up, 100000, 1);
  transfer(f.up, f.app, 100000, 2);
  CHECK(!find_event("sessionClosed", k.c, 0), "a graceful close ended a session with an open stream");
  flow_close_fds(&f);
  must_event("sessionClosed", k.c, 0);
  must_event("sessionClosed", k.s, 0);
}

/* Flow control: an upstream that never reads holds its stream's window, not the connection; its bytes come back. */
static void s_flow_control(void) {
  struct ahb_settings cfg = base_cfg;
  cfg.unread_linger_ms = 1500;
  relay_restart(&cfg);
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  struct flow stuck[3];
  static unsigned char junk[1 << 20];
  fill(junk, sizeof junk, 5);
  for (int i = 0; i < 3; i++) {
    stuck[i] = flow_open(&k, "10.0.0.8:80", 200);
    fcntl(stuck[i].app, F_SETFL, O_NONBLOCK);
    /* Write until the relay stops taking bytes (its stream window, 4 MiB, plus buffers): at most 12 MiB. */
    size_t sent = 0;
    for (int idle = 0; sent < 12u << 20 && idle < 20;) {
      ssize_t w = send(stuck[i].app, junk, sizeof junk, MSG_NOSIGNAL);
      if (w > 0) {
        sent += (size_t)w;
        idle = 0;
      } else {
        CHECK(errno == EAGAIN, "send: %s", strerror(errno));
        idle++;
        usleep(10000);
      }
    }
    CHECK(sent >= (4u << 20) && sent < (12u << 20), "stream %d took %zu bytes from an app whose peer never reads", i, sent);
  }
  /* 12 MiB of the 16 MiB connection window is held: a fresh stream still delivers. */
  struct flow ok = flow_open(&k, "10.0.0.8:81", 200);
  transfer(ok.app, ok.up, 1 << 20, 1);
  /* Reset the stuck streams: their unread bytes go back to the connection's window. */
  for (int i = 0; i < 3; i++) {
    ahb_close_stream(stuck[i].sst);
    must_event("closed", 0, stuck[i].cst);
    flow_close_fds(&stuck[i]);
  }
  transfer(ok.app, ok.up, 8u << 20, 2);
  /* A stream closed in order whose app never reads its last bytes is reset after the linger (1.5 s here). */
  struct flow lin = flow_open(&k, "10.0.0.8:82", 200);
  send_all(lin.app, junk, 300000);
  shutdown(lin.app, SHUT_WR);
  shutdown(lin.up, SHUT_WR);
  struct event *e = wait_event("closed", 0, lin.sst, 4000);
  CHECK(e, "a closed stream whose upstream never reads was not reset after the linger");
  flow_close_fds(&lin);
  transfer(ok.up, ok.app, 1 << 20, 3);
  flow_close_fds(&ok);
  conn_close(&k);
  relay_restart(&base_cfg);
}

/* Header limits: a request header list over 64 KiB, or an :authority over 1 KiB, is reset before the agent hears of it. */
static void s_oversized_headers(void) {
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  size_t n = 70 * 1024;
  char *h = malloc(n + 64);
  CHECK(h, "out of memory");
  size_t at = 0;
  for (int i = 0; at + 1100 < n; i++) at += (size_t)snprintf(h + at, n + 64 - at, "x-pad-%d\n%01000d\n", i, 7);
  int app;
  uint64_t big = stream_open(&k, "10.0.0.9:80", h, &app);
  struct event *s = must_event("status", 0, big);
  CHECK(s->status < 0, "a 70 KiB header list got status %lld", (long long)s->status);
  /* Never sent, but refused for its own size: opening it again would fail alike, so it is not handed back. */
  CHECK(s->retryFd < 0, "a CONNECT too large to send was handed back (retryFd %lld)", (long long)s->retryFd);
  must_event("closed", 0, big);
  close(app);
  char authority[2100];
  memset(authority, 'a', sizeof authority - 8);
  strcpy(authority + sizeof authority - 8, ".c:80");
  uint64_t longauth = stream_open(&k, authority, "", &app);
  CHECK(must_event("status", 0, longauth)->status < 0, "a 2 KiB authority was not refused");
  close(app);
  CHECK(!next_request(k.s, 100), "an oversized request reached the agent");
  /* Just under the limit still works. */
  at = 0;
  for (int i = 0; at + 1100 < 60 * 1024; i++) at += (size_t)snprintf(h + at, n + 64 - at, "x-pad-%d\n%01000d\n", i, 7);
  struct flow f = {0, 0, -1, -1};
  f.cst = stream_open(&k, "10.0.0.9:81", h, &f.app);
  struct event *r = next_request(k.s, WAIT_MS);
  CHECK(r, "a 60 KiB header list was refused");
  f.sst = (uint64_t)r->stream;
  int up[2];
  pair(up);
  ahb_answer(f.sst, 200, up[1]);
  f.up = up[0];
  CHECK(must_event("status", 0, f.cst)->status == 200, "60 KiB headers not answered 200");
  transfer(f.app, f.up, 1000, 1);
  flow_close_fds(&f);
  free(h);
  conn_close(&k);
}

/*
 * A client session (TLS context client_ctx, requiring the peer `expected`) meets a server session of the relay: the
 * server (by_server) or the client refuses the other's identity, and both sessions end.
 */
static void expect_identity_refused(uint64_t client_ctx, const char *expected, bool by_server, const char *what) {
  int sv[2];
  pair(sv);
  uint64_t client = ahb_client_session(client_ctx, sv[0], expected);
  uint64_t server = ahb_server_session(sctx, sv[1], TD);
  struct event *e = must_event("sessionClosed", by_server ? server : client, 0);
  CHECK(e->identityRefused == 1, "%s was not refused", what);
  must_event("sessionClosed", by_server ? client : server, 0);
}

/* Handshakes that never finish (silent peers) or fail (not TLS, wrong identity, unknown TLS context). */
static void s_handshakes(void) {
  struct ahb_settings cfg = base_cfg;
  cfg.handshake_timeout_ms = 400;
  relay_restart(&cfg);
  int a[2], b[2];
  pair(a);
  pair(b);
  uint64_t silent_server = ahb_server_session(sctx, a[0], TD);
  uint64_t silent_client = ahb_client_session(cctx, b[0], SERVER_ID);
  int q_app;
  struct conn q = {silent_client, 0, -1, -1};
  uint64_t queued = stream_open(&q, "10.0.0.10:80", "", &q_app);
  int64_t t0 = now_ms();
  struct event *e = must_event("sessionClosed", silent_server, 0);
  CHECK(e->timedOut == 1 && e->wasUp == 0, "silent client: timedOut=%lld wasUp=%lld", (long long)e->timedOut, (long long)e->wasUp);
  e = must_event("sessionClosed", silent_client, 0);
  CHECK(e->timedOut == 1, "silent server: timedOut=%lld", (long long)e->timedOut);
  CHECK(now_ms() - t0 < 3000, "handshake deadline of 400 ms took %lld ms", (long long)(now_ms() - t0));
  CHECK(must_event("status", 0, queued)->status < 0, "queued stream of a timed-out session");
  close(q_app);
  expect_eof(a[1]);
  close(a[1]);
  close(b[1]);
  relay_restart(&base_cfg);
  /* Not TLS at all. */
  int c[2];
  pair(c);
  uint64_t garbage = ahb_server_session(sctx, c[0], TD);
  send_all(c[1], "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27);
  e = must_event("sessionClosed", garbage, 0);
  CHECK(e->wasUp == 0, "plain HTTP was taken for TLS");
  close(c[1]);
  /* A TLS client that stops after a partial ClientHello is handled by the deadline above; one that hangs up mid-way: */
  int d[2];
  pair(d);
  uint64_t half = ahb_server_session(sctx, d[0], TD);
  send_all(d[1], "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
  close(d[1]);
  must_event("sessionClosed", half, 0);
  /* The server is not who the client expects. */
  expect_identity_refused(cctx, "spiffe://" TD "/ns/app/sa/someone-else", false, "a server with the wrong identity");
  /* A client certificate for another trust domain (the server's rule) */
  expect_identity_refused(wrongctx, SERVER_ID, true, "a client from another trust domain");
  /* A TLS context that was freed, or never existed. */
  int u[2];
  pair(u);
  uint64_t uc = ahb_client_session(123456789, u[0], SERVER_ID);
  e = must_event("sessionClosed", uc, 0);
  CHECK(e->wasUp == 0, "a session with an unknown TLS context came up");
  close(u[1]);
}

/* ---------- a raw HTTP/2 client (frames written by hand, for what a well-behaved nghttp2 client never sends) ---------- */

struct raw {
  SSL_CTX *ctx;
  SSL *ssl;
  int fd;
  uint64_t s;           /* the relay's server session */
  unsigned char *in;    /* frames received, not parsed yet */
  size_t inlen, incap;
  uint32_t goaway;      /* last GOAWAY's error code, or UINT32_MAX */
  bool eof;
  uint32_t *rst;        /* RST_STREAM code received per stream id (UINT32_MAX: none) */
  size_t nrst;
  int64_t settings[7];  /* the server's SETTINGS values by identifier (1 .. 6; -1: not sent) */
  uint32_t conn_window_update; /* the sum of WINDOW_UPDATE increments on stream 0 */
  int pings;            /* PINGs received (each acknowledged) */
};

static void raw_frame(struct buf *b, uint8_t type, uint8_t flags, uint32_t sid, const void *payload, size_t n) {
  unsigned char h[9] = {(unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n, type, flags,
                        (unsigned char)(sid >> 24 & 0x7f), (unsigned char)(sid >> 16), (unsigned char)(sid >> 8), (unsigned char)sid};
  CHECK(buf_append(b, h, 9) == 0 && (!n || buf_append(b, payload, n) == 0), "out of memory");
}

/* HEADERS (END_HEADERS) of a CONNECT to `authority`, HPACK literals with indexed names (:method 2, :authority 1). */
static void raw_connect(struct buf *b, uint32_t sid, const char *authority) {
  unsigned char blk[128];
  size_t alen = strlen(authority), n = 0;
  CHECK(alen < 100, "authority too long");
  blk[n++] = 0x02;
  blk[n++] = 7;
  memcpy(blk + n, "CONNECT", 7);
  n += 7;
  blk[n++] = 0x01;
  blk[n++] = (unsigned char)alen;
  memcpy(blk + n, authority, alen);
  n += alen;
  raw_frame(b, 1, 0x4, sid, blk, n);
}

static void raw_rst(struct buf *b, uint32_t sid, uint32_t code) {
  unsigned char c[4] = {(unsigned char)(code >> 24), (unsigned char)(code >> 16), (unsigned char)(code >> 8), (unsigned char)code};
  raw_frame(b, 3, 0, sid, c, 4);
}

/* Writes b with one SSL_write: at most 16 KiB of it is one TLS record, which the relay reads and processes at once. */
static void raw_send(struct raw *r, struct buf *b) {
  size_t done = 0;
  while (done < b->len) {
    int n = SSL_write(r->ssl, b->p + b->off + done, (int)(b->len - done));
    CHECK(n > 0, "raw client: SSL_write failed (%d)", SSL_get_error(r->ssl, n));
    done += (size_t)n;
  }
  buf_free(b);
}

/* Opens a TLS connection with the client certificate to a new server session, sends the preface and SETTINGS. */
static struct raw raw_open(void) {
  struct raw r = {0};
  r.goaway = UINT32_MAX;
  for (int i = 0; i < 7; i++) r.settings[i] = -1;
  int sv[2];
  pair(sv);
  r.s = ahb_server_session(sctx, sv[1], TD);
  r.fd = sv[0];
  char err[300];
  r.ctx = tls_ctx_new(0, client_pem.chain, client_pem.key, root_pem, err, sizeof err);
  CHECK(r.ctx, "raw client TLS context: %s", err);
  r.ssl = SSL_new(r.ctx);
  SSL_set_fd(r.ssl, r.fd);
  CHECK(SSL_connect(r.ssl) == 1, "raw client: TLS handshake failed");
  struct buf b = {0};
  CHECK(buf_append(&b, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24) == 0, "out of memory");
  raw_frame(&b, 4, 0, 0, NULL, 0);
  raw_send(&r, &b);
  must_event("up", r.s, 0);
  return r;
}

/* Reads and parses what the server sent for up to ms (SETTINGS are acknowledged, PINGs not needed here). */
static void raw_pump(struct raw *r, int ms) {
  int64_t end = now_ms() + ms;
  while (!r->eof) {
    int64_t left = end - now_ms();
    struct pollfd p = {r->fd, POLLIN, 0};
    if (!SSL_has_pending(r->ssl) && (left <= 0 || poll(&p, 1, (int)left) <= 0)) break;
    if (r->incap - r->inlen < 16384) {
      r->incap = r->incap ? r->incap * 2 : 65536;
      r->in = realloc(r->in, r->incap);
      CHECK(r->in, "out of memory");
    }
    int n = SSL_read(r->ssl, r->in + r->inlen, (int)(r->incap - r->inlen));
    if (n <= 0) {
      r->eof = true;
      ERR_clear_error();
      break;
    }
    r->inlen += (size_t)n;
    size_t at = 0;
    while (r->inlen - at >= 9) {
      const unsigned char *h = r->in + at;
      size_t len = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
      if (r->inlen - at < 9 + len) break;
      uint32_t sid = ((uint32_t)h[5] << 24 | (uint32_t)h[6] << 16 | (uint32_t)h[7] << 8 | h[8]) & 0x7fffffff;
      const unsigned char *pl = h + 9;
      if (h[3] == 3 && len == 4) {
        if (sid >= r->nrst) {
          size_t m = sid + 1024;
          r->rst = realloc(r->rst, m * sizeof *r->rst);
          CHECK(r->rst, "out of memory");
          for (size_t i = r->nrst; i < m; i++) r->rst[i] = UINT32_MAX;
          r->nrst = m;
        }
        r->rst[sid] = (uint32_t)pl[0] << 24 | (uint32_t)pl[1] << 16 | (uint32_t)pl[2] << 8 | pl[3];
      } else if (h[3] == 7 && len >= 8) {
        r->goaway = (uint32_t)pl[4] << 24 | (uint32_t)pl[5] << 16 | (uint32_t)pl[6] << 8 | pl[7];
      } else if (h[3] == 4 && !(h[4] & 1)) {
        for (size_t i = 0; i + 6 <= len; i += 6) {
          unsigned id = (unsigned)pl[i] << 8 | pl[i + 1];
          if (id >= 1 && id <= 6) r->settings[id] = (int64_t)((uint32_t)pl[i + 2] << 24 | (uint32_t)pl[i + 3] << 16 | (uint32_t)pl[i + 4] << 8 | pl[i + 5]);
        }
        struct buf b = {0};
        raw_frame(&b, 4, 1, 0, NULL, 0);
        raw_send(r, &b);
      } else if (h[3] == 8 && sid == 0 && len == 4) {
        r->conn_window_update += ((uint32_t)pl[0] << 24 | (uint32_t)pl[1] << 16 | (uint32_t)pl[2] << 8 | pl[3]) & 0x7fffffff;
      } else if (h[3] == 6 && !(h[4] & 1) && len == 8) {
        r->pings++;
        struct buf b = {0};
        raw_frame(&b, 6, 1, 0, pl, 8);
        raw_send(r, &b);
      }
      at += 9 + len;
    }
    memmove(r->in, r->in + at, r->inlen - at);
    r->inlen -= at;
  }
}

static uint32_t raw_rst_code(struct raw *r, uint32_t sid) { return sid < r->nrst ? r->rst[sid] : UINT32_MAX; }

static void raw_close(struct raw *r) {
  SSL_free(r->ssl);
  SSL_CTX_free(r->ctx);
  close(r->fd);
  free(r->in);
  free(r->rst);
  must_event("sessionClosed", r->s, 0);
}

/* Requests on session `s` reported so far (not taken by next_request). */
static size_t requests_of(uint64_t s) { return count_events("request", s, 0); }

/*
 * Rapid reset (CVE-2023-44487) at the relay: HEADERS and RST_STREAM of each stream in one read are never reported to
 * the agent (it would dial the app for streams already gone). Requests the agent is working on are capped per session
 * (MAX_STREAMS, counted until answered even when the peer resets them meanwhile): beyond, REFUSED_STREAM, unreported.
 * A connection error ends the session with a GOAWAY carrying its error code, not NO_ERROR.
 */
static void s_rapid_reset(void) {
  struct raw r = raw_open();
  uint32_t sid = 1;
  for (int round = 0; round < 5; round++) {
    struct buf b = {0};
    for (int i = 0; i < 100; i++, sid += 2) {
      raw_connect(&b, sid, "10.0.0.20:80");
      raw_rst(&b, sid, 8 /* CANCEL */);
    }
    CHECK(b.len <= 16384, "one burst must fit one TLS record (%zu bytes)", b.len);
    raw_send(&r, &b);
  }
  /* A request on its own, after the bursts, is reported: the connection still serves. */
  struct buf b = {0};
  raw_connect(&b, sid, "10.0.0.21:80");
  raw_send(&r, &b);
  struct event *e = next_request(r.s, WAIT_MS);
  CHECK(e && strcmp(e->authority, "10.0.0.21:80") == 0, "the request after the bursts was not reported");
  CHECK(requests_of(r.s) == 1, "%zu requests reported for streams reset in the same read (want 0)", requests_of(r.s) - 1);
  ahb_answer((uint64_t)e->stream, 403, -1);
  struct buf end = {0};
  raw_rst(&end, sid, 8); /* answered but not ended by us: it would still count against nghttp2's 200 open streams */
  raw_send(&r, &end);
  must_event("closed", 0, (uint64_t)e->stream);
  sid += 2;
  /* The cap: MAX_STREAMS requests left unanswered and then reset by the peer still count. */
  uint64_t held[MAX_STREAMS];
  uint32_t first = sid;
  for (int i = 0; i < MAX_STREAMS; i += 50) {
    struct buf h = {0};
    for (int j = 0; j < 50; j++, sid += 2) raw_connect(&h, sid, "10.0.0.22:80");
    raw_send(&r, &h);
  }
  for (int i = 0; i < MAX_STREAMS; i++) {
    e = next_request(r.s, WAIT_MS);
    CHECK(e, "request %d of %d not reported", i, MAX_STREAMS);
    held[i] = (uint64_t)e->stream;
  }
  struct buf x = {0};
  for (uint32_t s2 = first; s2 < sid; s2 += 2) raw_rst(&x, s2, 8);
  raw_send(&r, &x);
  for (int i = 0; i < MAX_STREAMS; i++) must_event("closed", 0, held[i]); /* the agent hears of each end at once */
  uint32_t over = sid;
  struct buf o = {0};
  for (int i = 0; i < 10; i++, sid += 2) raw_connect(&o, sid, "10.0.0.23:80");
  raw_send(&r, &o);
  for (int64_t end = now_ms() + WAIT_MS; raw_rst_code(&r, sid - 2) == UINT32_MAX && !r.eof && now_ms() < end;) raw_pump(&r, 50);
  for (uint32_t s2 = over; s2 < sid; s2 += 2) CHECK(raw_rst_code(&r, s2) == NGHTTP2_REFUSED_STREAM, "stream %u over the cap: RST code %u, want REFUSED_STREAM", s2, raw_rst_code(&r, s2));
  CHECK(!next_request(r.s, 100), "a request over the cap was reported");
  /* Answered (late, the streams are gone: dropped), the agent's work is done and new requests are reported again. */
  for (int i = 0; i < MAX_STREAMS; i++) ahb_answer(held[i], 503, -1);
  struct buf n2 = {0};
  raw_connect(&n2, sid, "10.0.0.24:80");
  raw_send(&r, &n2);
  e = next_request(r.s, WAIT_MS);
  CHECK(e && strcmp(e->authority, "10.0.0.24:80") == 0, "no request reported once the held ones were answered");
  ahb_answer((uint64_t)e->stream, 403, -1);
  sid += 2;
  /* A connection error (HEADERS on stream 0): GOAWAY with PROTOCOL_ERROR. */
  struct buf bad = {0};
  raw_connect(&bad, 0, "10.0.0.25:80");
  raw_send(&r, &bad);
  raw_pump(&r, 1000);
  CHECK(r.goaway == NGHTTP2_PROTOCOL_ERROR, "GOAWAY code %u after a protocol error, want PROTOCOL_ERROR", r.goaway);
  raw_close(&r);
  /* Resets beyond nghttp2's rate limit end the session, with an error code in its GOAWAY. */
  r = raw_open();
  sid = 1;
  for (int round = 0; round < 40 && !r.eof && r.goaway == UINT32_MAX; round++) {
    struct buf h = {0};
    for (int i = 0; i < 100; i++, sid += 2) {
      raw_connect(&h, sid, "10.0.0.26:80");
      raw_rst(&h, sid, 8);
    }
    raw_send(&r, &h);
    raw_pump(&r, 5);
  }
  raw_pump(&r, 1000);
  CHECK(r.goaway != UINT32_MAX && r.goaway != NGHTTP2_NO_ERROR, "after 4,000 resets: GOAWAY code %d (want an error code)", (int)r.goaway);
  CHECK(requests_of(r.s) == 0, "%zu requests reported for streams reset in the same read", requests_of(r.s));
  fprintf(stderr, "relay-harness:      rapid reset: session ended with GOAWAY code %u after %u streams\n", r.goaway, (sid - 1) / 2);
  raw_close(&r);
}

/* Starts the relay with `cfg` (stopped before) and checks it is refused, naming `setting`. */
static void expect_bad_setting(const struct ahb_settings *cfg, const char *setting) {
  CHECK(ahb_start(cfg) < 0, "ahb_start took a bad %s", setting);
  CHECK(strstr(ahb_last_error(), setting), "bad %s refused with \"%s\"", setting, ahb_last_error());
}

/*
 * The settings the agent passes reach the wire: the server's SETTINGS frame carries the configured window, frame size,
 * stream and header limits, its connection WINDOW_UPDATE the connection window, and PINGs come at the keepalive
 * interval; a setting out of its range (or suites OpenSSL does not know) fails ahb_start, naming it.
 */
static void s_settings(void) {
  relay_stop();
  struct ahb_settings bad = base_cfg;
  bad.max_frame_size = 16383;
  expect_bad_setting(&bad, "max_frame_size");
  bad = base_cfg;
  bad.stream_window = 0x80000000u;
  expect_bad_setting(&bad, "stream_window");
  bad = base_cfg;
  bad.keepalive_timeout_ms = 0;
  expect_bad_setting(&bad, "keepalive_timeout_ms");
  bad = base_cfg;
  bad.handshake_timeout_ms = -1;
  expect_bad_setting(&bad, "handshake_timeout_ms");
  bad = base_cfg;
  bad.ciphersuites = "TLS_NOT_A_SUITE";
  expect_bad_setting(&bad, "ciphersuites");
  bad = base_cfg;
  bad.ciphersuites = "";
  expect_bad_setting(&bad, "ciphersuites");
  bad = base_cfg;
  bad.alpn = NULL;
  expect_bad_setting(&bad, "alpn");
  CHECK(ahb_start(NULL) < 0, "ahb_start took no settings");

  struct ahb_settings cfg = base_cfg;
  cfg.stream_window = (1 << 20) + 7;
  cfg.connection_window = (3 << 20) + 11;
  cfg.max_frame_size = 32768;
  cfg.server_max_streams = 7;
  cfg.server_max_header_list = 20000;
  cfg.keepalive_interval_ms = 1000;
  relay_restart(&cfg);
  struct raw r = raw_open();
  for (int64_t end = now_ms() + WAIT_MS; (r.settings[4] < 0 || !r.pings) && !r.eof && now_ms() < end;) raw_pump(&r, 50);
  CHECK(r.settings[4] == cfg.stream_window, "SETTINGS_INITIAL_WINDOW_SIZE %lld, want %u", (long long)r.settings[4], cfg.stream_window);
  CHECK(r.settings[5] == cfg.max_frame_size, "SETTINGS_MAX_FRAME_SIZE %lld, want %u", (long long)r.settings[5], cfg.max_frame_size);
  CHECK(r.settings[3] == cfg.server_max_streams, "SETTINGS_MAX_CONCURRENT_STREAMS %lld, want %u", (long long)r.settings[3], cfg.server_max_streams);
  CHECK(r.settings[6] == cfg.server_max_header_list, "SETTINGS_MAX_HEADER_LIST_SIZE %lld, want %u", (long long)r.settings[6], cfg.server_max_header_list);
  CHECK(r.conn_window_update + 65535 == cfg.connection_window, "connection window %u, want %u", r.conn_window_update + 65535, cfg.connection_window);
  CHECK(r.pings > 0, "no PING within %d ms at a keepalive interval of %d ms", WAIT_MS, cfg.keepalive_interval_ms);
  raw_close(&r);
  relay_restart(&base_cfg);
}

/*
 * Issue 11 item 9 at the library's level: a context freed right after a session call was made with it (the agent renews
 * the certificate while a dial is queued) must still serve that session.
 */
static void s_ctx_free_race(void) {
  for (int i = 0; i < 10; i++) {
    int sv[2];
    pair(sv);
    uint64_t c1 = ahb_ctx_new(0, client_pem.chain, client_pem.key, root_pem);
    uint64_t s1 = ahb_ctx_new(1, server_pem.chain, server_pem.key, root_pem);
    CHECK(c1 && s1, "ahb_ctx_new: %s", ahb_last_error());
    struct conn k = {0, 0, -1, -1};
    k.c = ahb_client_session(c1, sv[0], SERVER_ID);
    k.s = ahb_server_session(s1, sv[1], TD);
    ahb_ctx_free(c1);
    ahb_ctx_free(s1);
    conn_wait_up(&k);
    struct flow f = flow_open(&k, "10.0.0.11:80", 200);
    transfer(f.app, f.up, 1000, 1);
    flow_close_fds(&f);
    conn_close(&k);
  }
}

/* Random orders of every call, on sessions at every stage: the contract holds and the sanitizers stay quiet. */
static void s_random_orders(unsigned seed) {
  srand(seed);
  enum { MAXS = 24 };
  for (int round = 0; round < 20; round++) {
    struct conn k = conn_open(rand() % 4 == 0);
    uint64_t ids[MAXS];
    int fds[MAXS * 2];
    int nids = 0, nfds = 0;
    int steps = 5 + rand() % 30;
    for (int i = 0; i < steps; i++) {
      int op = rand() % 10;
      if (op <= 2 && nids < MAXS) {
        int app;
        ids[nids++] = stream_open(&k, "10.0.0.12:80", rand() % 2 ? "" : "baggage\nk=v\n", &app);
        fds[nfds++] = app;
      } else if (op == 3 && nids) {
        ahb_close_stream(ids[rand() % nids]);
      } else if (op == 4 && !k.s) {
        conn_start_server(&k);
      } else if (op == 5 && k.s) {
        struct event *r = next_request(k.s, rand() % 20);
        if (r) {
          int up[2] = {-1, -1};
          int status = rand() % 3 ? 200 : 403;
          if (status == 200 && rand() % 4) {
            pair(up);
            fds[nfds++] = up[0];
          }
          ahb_answer((uint64_t)r->stream, status, up[1]);
          if (rand() % 2) ahb_answer((uint64_t)r->stream, 200, -1); /* twice: ignored */
        }
      } else if (op == 6 && nids) {
        int x = rand() % nids;
        ahb_answer(ids[x], 200, -1); /* a client stream: ignored */
      } else if (op == 7 && nfds) {
        int x = rand() % nfds;
        if (fds[x] >= 0) {
          char buf[3000];
          fill((unsigned char *)buf, sizeof buf, (unsigned)i);
          if (rand() % 2) {
            send(fds[x], buf, sizeof buf, MSG_NOSIGNAL | MSG_DONTWAIT);
          } else {
            close(fds[x]);
            fds[x] = -1;
          }
        }
      } else if (op == 8 && rand() % 4 == 0) {
        ahb_close_session(rand() % 2 || !k.s ? k.c : k.s, rand() % 2);
      } else {
        usleep((useconds_t)(rand() % 3000));
      }
      pump_events(0);
    }
    if (!k.s) conn_start_server(&k);
    if (rand() % 2) settle(rand() % 50);
    conn_close(&k);
    for (int i = 0; i < nfds; i++)
      if (fds[i] >= 0) close(fds[i]);
    /* A stream refused before anything was sent hands its app socket back: the caller's to close (or reopen). */
    for (int i = 0; i < nids; i++) {
      struct event *e = must_event("status", 0, ids[i]);
      if (e->retryFd >= 0) close((int)e->retryFd);
      e->retryFd = -1;
    }
  }
}

/*
 * The server side refuses a stream (REFUSED_STREAM: it has server_max_streams requests the agent is still working on,
 * here one whose client already gave up): the client hands the untouched app socket back, and the caller opens the
 * stream again with it once the server has room.
 */
static void s_refused_hand_back(void) {
  struct ahb_settings cfg = base_cfg;
  cfg.server_max_streams = 1;
  relay_restart(&cfg);
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  int a_app;
  uint64_t a = stream_open(&k, "10.0.0.30:1", "", &a_app);
  struct event *ra = next_request(k.s, WAIT_MS);
  CHECK(ra, "no request for the first stream");
  uint64_t held = (uint64_t)ra->stream;
  ahb_close_stream(a); /* the client gives up; the server counts the request until the agent answers it */
  must_event("closed", 0, held);
  must_event("closed", 0, a);
  close(a_app);
  int b_app;
  uint64_t b = stream_open(&k, "10.0.0.30:2", "", &b_app);
  struct event *sb = must_event("status", 0, b);
  CHECK(sb->status < 0 && sb->retryFd >= 0, "a stream refused by the server (REFUSED_STREAM): status %lld, retryFd %lld", (long long)sb->status, (long long)sb->retryFd);
  must_event("closed", 0, b);
  CHECK(!next_request(k.s, 100), "the refused request was reported");
  expect_same_connection(b_app, (int)sb->retryFd);
  /* The held request answered, the server has room again: the same app socket goes out on a new stream. */
  ahb_answer(held, 503, -1);
  uint64_t b2 = ahb_client_stream(k.c, (int)sb->retryFd, "10.0.0.30:2", "");
  CHECK(b2, "ahb_client_stream");
  note_client_stream(b2);
  struct event *rb = next_request(k.s, WAIT_MS);
  CHECK(rb && strcmp(rb->authority, "10.0.0.30:2") == 0, "the stream opened again did not reach the server");
  int up[2];
  pair(up);
  ahb_answer((uint64_t)rb->stream, 200, up[1]);
  CHECK(must_event("status", 0, b2)->status == 200, "the stream opened again was not answered 200");
  transfer(b_app, up[0], 20000, 5);
  transfer(up[0], b_app, 20000, 6);
  close(b_app);
  close(up[0]);
  must_event("closed", 0, b2);
  conn_close(&k);
  relay_restart(&base_cfg);
}

/*
 * A shutdown notice (ahb_close_session flag 2, the start of a take-over) reaches a server session still in its TLS
 * handshake: it is left alone, comes up and serves; on a server session that is up it is a GOAWAY the open stream
 * outlives, and the final close (flag 1) ends the session once that stream is done.
 */
static void s_notice_during_handshake(void) {
  int sv[2];
  pair(sv);
  struct conn k = {0, 0, -1, -1};
  k.s = ahb_server_session(sctx, sv[1], TD); /* the client has not sent its ClientHello yet */
  ahb_close_session(k.s, 2);
  settle(200);
  CHECK(!find_event("sessionClosed", k.s, 0), "a shutdown notice closed a server session still in its handshake");
  k.c = ahb_client_session(cctx, sv[0], SERVER_ID);
  CHECK(k.c, "ahb_client_session: %s", ahb_last_error());
  conn_wait_up(&k);
  struct flow f = flow_open(&k, "10.0.0.31:80", 200);
  ahb_close_session(k.s, 2);
  must_event("goaway", k.c, 0);
  transfer(f.app, f.up, 30000, 7);
  ahb_close_session(k.s, 1);
  transfer(f.up, f.app, 30000, 8);
  CHECK(!find_event("sessionClosed", k.s, 0), "the final close ended a session with an open stream");
  flow_close_fds(&f);
  must_event("sessionClosed", k.s, 0);
  must_event("sessionClosed", k.c, 0);
}

/*
 * A hand-back whose "status" event cannot be queued (the library lost an event: out of memory) must not leave the app
 * socket open with nobody owning it: the library resets it. Both hand-back paths: a session gone before the stream
 * command ran, and a REFUSED_STREAM from the server. events_lost is set before the call whose command meets it (the
 * queue's mutex orders the two threads); the relay is restarted after, as the agent would after losing its events.
 */
static void s_hand_back_lost(void) {
  int ap[2];
  pair(ap);
  relay.events_lost = 1;
  CHECK(ahb_client_stream(999999, ap[1], "10.0.0.32:1", ""), "ahb_client_stream");
  expect_eof(ap[0]);
  close(ap[0]);
  struct ahb_settings cfg = base_cfg;
  cfg.server_max_streams = 1;
  relay_restart(&cfg);
  struct conn k = conn_open(true);
  conn_wait_up(&k);
  int a_app, b_app;
  uint64_t a = stream_open(&k, "10.0.0.32:2", "", &a_app);
  struct event *ra = next_request(k.s, WAIT_MS);
  CHECK(ra, "no request for the first stream");
  ahb_close_stream(a);
  must_event("closed", 0, (uint64_t)ra->stream);
  must_event("closed", 0, a);
  close(a_app);
  pair(ap);
  b_app = ap[0];
  relay.events_lost = 1;
  CHECK(ahb_client_stream(k.c, ap[1], "10.0.0.32:3", ""), "ahb_client_stream"); /* refused by the server: REFUSED_STREAM */
  expect_eof(b_app);
  close(b_app);
  relay_restart(&base_cfg); /* the sessions end without events: they were lost */
}

static int passed;

/* Open fds of this process: a scenario must end with as many as it started with (a handed-back fd is the caller's). */
static int count_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  CHECK(d, "opendir /proc/self/fd");
  int n = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

/* Runs one scenario (all, or only the one named by RELAY_HARNESS_ONLY) and checks the contract after it. */
static void run(const char *name, void (*fn)(void)) {
  const char *only = getenv("RELAY_HARNESS_ONLY");
  if (only && *only && strcmp(only, name) != 0) return;
  scenario = name;
  int64_t t0 = now_ms();
  int fds = count_fds();
  fn();
  check_contract();
  int64_t end = now_ms() + WAIT_MS;
  while (count_fds() != fds && now_ms() < end) settle(20);
  CHECK(count_fds() == fds, "%d fds open after the scenario, %d before (a leak)", count_fds(), fds);
  passed++;
  fprintf(stderr, "relay-harness: ok   %-22s %5lld ms\n", name, (long long)(now_ms() - t0));
}

static void s_random(void) {
  for (unsigned seed = 1; seed <= 5; seed++) s_random_orders(seed);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  alarm(120); /* a hang is a failure, not a stuck CI job */
  EVP_PKEY *root_key = EVP_EC_gen("P-256");
  CHECK(root_key, "root key");
  X509 *root = make_cert(root_key, NULL, NULL, NULL, 1);
  root_pem = cert_pem(root);
  client_pem = make_leaf(root, root_key, CLIENT_ID, 2);
  server_pem = make_leaf(root, root_key, SERVER_ID, 3);
  other_pem = make_leaf(root, root_key, "spiffe://other.domain/ns/app/sa/client", 4);
  X509_free(root);
  EVP_PKEY_free(root_key);

  relay_restart(&base_cfg);

  int64_t t0 = now_ms();
  run("connect-and-data", s_connect_data);
  run("non-200-answers", s_non_200);
  run("answer-connect", s_answer_connect);
  run("listen", s_listen);
  run("listen-races", s_listen_races);
  run("stream-reset", s_reset);
  run("reset-before-answer", s_reset_before_answer);
  run("refused-hand-back", s_refused_hand_back);
  run("notice-in-handshake", s_notice_during_handshake);
  run("hand-back-event-lost", s_hand_back_lost);
  run("queued-stream-abort", s_queued_abort);
  run("session-close", s_session_close);
  run("flow-control", s_flow_control);
  run("oversized-headers", s_oversized_headers);
  run("handshakes", s_handshakes);
  run("ctx-free-race", s_ctx_free_race);
  run("rapid-reset", s_rapid_reset);
  run("settings", s_settings);
  run("random-call-orders", s_random);

  scenario = "stop";
  relay_stop();
  CHECK(live_streams() == 0, "streams left after stop");
  free(evs);
  free(client_streams);
  free(root_pem);
  free(client_pem.chain);
  free(client_pem.key);
  free(server_pem.chain);
  free(server_pem.key);
  free(other_pem.chain);
  free(other_pem.key);
  CHECK(passed > 0, "no scenario named %s", getenv("RELAY_HARNESS_ONLY"));
  printf("relay-harness: %d passed, 0 failed (%lld ms)\n", passed, (long long)(now_ms() - t0));
  return 0;
}
