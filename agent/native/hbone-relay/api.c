/*
 * The exported C API (ahb_*), called on the agent's thread through koffi (agent/src/hbone/native-lib.ts). A call copies
 * its arguments into a command, queues it under relay.mu and wakes the loop (eventfd); ids are allocated here, so calls
 * return at once. Ownership: an fd passed in belongs to the library from the call on, also when the call fails (it is
 * closed); the strings are copied. TLS contexts are kept on relay.ctxs until ahb_ctx_free or ahb_stop.
 *
 * Contract (every call, in any order, on ids that exist, are gone or never were, is memory-safe; the harness in
 * agent/native/test/relay-harness.c plays such orders under ASan/UBSan):
 * - A call never blocks on the loop: it queues a command, which the loop runs in call order.
 * - Every session id returned gets exactly one "sessionClosed" event (preceded by "up" if it came up).
 * - Every client stream id returned gets exactly one "status" event (the answer's status, or -1 with an error: session
 *   failed, stream reset or refused by the peer before answering, aborted, oversized) and then exactly one "closed".
 *   A stream whose CONNECT was never processed hands its app socket back: its status event carries "retryFd", an fd the
 *   agent owns from then on (to open the stream again). That is: REFUSED_STREAM from the peer; a GOAWAY received before
 *   its CONNECT was sent (nghttp2 closes it with REFUSED_STREAM); its session gone (or never made) when the stream command
 *   runs. Not: a stream queued on a session that fails later (reset, like its other streams), a CONNECT nghttp2 would
 *   not send for its own sake (too large), or anything while the library stops.
 * - A server stream gets exactly one "closed" event once its "request" event was sent; one reset before that (header
 *   limits, or by the peer in the same read as its HEADERS) is never reported. The library keeps a reported stream until
 *   it is answered or closed by the agent, even once "closed" was sent, and refuses (REFUSED_STREAM, unreported) new
 *   requests of a session that has server_max_streams (ahb_settings) such streams: answer every request, late ones included. Answer
 *   each request once (ahb_answer, or ahb_answer_connect: the agent's part ends with the call, the library answers once
 *   the connect ends, and a stream reset or closed meanwhile closes that socket); later answers, answers to client
 *   streams and answers to streams already gone are ignored (their fd is closed).
 * - A listener (ahb_listen) reports each connection it accepts in an "accepted" event carrying its fd, which the agent
 *   owns from then on (also one for a listener it has just stopped: events already queued still come), at most as many
 *   as its credits allow before ahb_listen_credit; "listenerError" says it could not accept for a while (it rests a
 *   second) or, with "gone", could not be made (not a listening socket of its family, out of memory). ahb_unlisten and
 *   ahb_stop close its listening fd.
 * - ahb_close_stream and ahb_close_session on ids that are gone are ignored. A stream closed while its session is still
 *   handshaking is dropped at once and never sent; a session closed while handshaking fails its queued streams.
 * - A call that returns 0 for an id (out of memory) has closed the fd it was given; no event will come for it.
 * - If the library cannot queue an event (out of memory), it closes every session and stream and shuts the event
 *   socket: the agent reads the end of the stream.
 * - Memory: a stream is freed only once nghttp2 no longer refers to it (never submitted, or after on_stream_close),
 *   or with its whole session; nothing is freed inside an nghttp2 callback.
 */
#include "relay.h"
#include "ahb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

static void enqueue(struct cmd *c) {
  pthread_mutex_lock(&relay.mu);
  if (relay.cmds_tail) relay.cmds_tail->next = c;
  else relay.cmds = c;
  relay.cmds_tail = c;
  pthread_mutex_unlock(&relay.mu);
  uint64_t one = 1;
  if (write(relay.wakefd, &one, sizeof one) < 0) { /* eventfd cannot overflow here */
  }
}

/* A command owning fd (closed, and NULL returned, when memory runs out). */
static struct cmd *cmd_new(enum cmd_kind kind, int fd) {
  struct cmd *c = calloc(1, sizeof *c);
  if (!c) {
    if (fd >= 0) close(fd);
    snprintf(relay.err, sizeof relay.err, "out of memory");
    return NULL;
  }
  c->kind = kind;
  c->fd = fd;
  return c;
}

/* Copies a string argument into the command (NULL as ""); -1 when memory runs out. */
static int cmd_str(char **to, const char *s) {
  *to = strdup(s ? s : "");
  if (*to) return 0;
  snprintf(relay.err, sizeof relay.err, "out of memory");
  return -1;
}

/* The context's SSL_CTX with a reference of its own for the caller, or NULL when the id is unknown. */
static SSL_CTX *find_ctx(uint64_t id) {
  SSL_CTX *ctx = NULL;
  pthread_mutex_lock(&relay.mu);
  for (struct ctx_entry *c = relay.ctxs; c; c = c->next)
    if (c->id == id) {
      ctx = c->ctx;
      SSL_CTX_up_ref(ctx);
      break;
    }
  pthread_mutex_unlock(&relay.mu);
  return ctx;
}

/* The last error of a call that returned -1 or 0. */
AHB_EXPORT const char *ahb_last_error(void) { return relay.err; }

/* One numeric setting within [lo, hi]; else -1 with the setting's name in relay.err. */
static int check_range(const char *name, int64_t v, int64_t lo, int64_t hi) {
  if (v >= lo && v <= hi) return 0;
  snprintf(relay.err, sizeof relay.err, "bad setting %s: %lld is not within %lld .. %lld", name, (long long)v, (long long)lo, (long long)hi);
  return -1;
}

/* One string setting of 1 .. max bytes, copied into `to` (max + 1 bytes); else -1 with its name in relay.err. */
static int copy_setting(const char *name, const char *v, char *to, size_t max) {
  size_t n = v ? strlen(v) : 0;
  if (n < 1 || n > max) {
    snprintf(relay.err, sizeof relay.err, "bad setting %s: %zu bytes, not within 1 .. %zu", name, n, max);
    return -1;
  }
  memcpy(to, v, n + 1);
  return 0;
}

/* Checks every setting against the range documented in ahb.h and copies them into relay.cfg; -1 and relay.err if one is bad. */
static int take_settings(const struct ahb_settings *in) {
  if (!in) {
    snprintf(relay.err, sizeof relay.err, "no settings");
    return -1;
  }
  const int64_t ms_max = 1000000000, window_max = 0x7fffffff, list_max = 16 << 20;
  if (check_range("stream_window", in->stream_window, 1, window_max) || check_range("connection_window", in->connection_window, 65535, window_max) ||
      check_range("max_frame_size", in->max_frame_size, 16384, 16777215) ||
      check_range("server_max_header_list", in->server_max_header_list, 1024, list_max) ||
      check_range("client_max_header_list", in->client_max_header_list, 1024, list_max) ||
      check_range("server_max_streams", in->server_max_streams, 1, 100000) ||
      check_range("peer_max_streams_before_settings", in->peer_max_streams_before_settings, 1, 100000) ||
      check_range("max_method", in->max_method, 1, 64) || check_range("max_authority", in->max_authority, 1, 2048) ||
      check_range("keepalive_interval_ms", in->keepalive_interval_ms, 1000, ms_max) ||
      check_range("keepalive_timeout_ms", in->keepalive_timeout_ms, 1000, ms_max) ||
      check_range("handshake_timeout_ms", in->handshake_timeout_ms, 0, ms_max) || check_range("idle_timeout_ms", in->idle_timeout_ms, 0, ms_max) ||
      check_range("unread_linger_ms", in->unread_linger_ms, 0, ms_max))
    return -1;
  struct ahb_settings cfg = *in;
  if (copy_setting("ciphersuites", in->ciphersuites, relay.suites, sizeof relay.suites - 1) ||
      copy_setting("alpn", in->alpn, relay.alpn, sizeof relay.alpn - 1))
    return -1;
  cfg.ciphersuites = relay.suites;
  cfg.alpn = relay.alpn;
  if (tls_check_settings(&cfg, relay.err, sizeof relay.err)) return -1;
  relay.cfg = cfg;
  return 0;
}

/**
 * Starts the loop thread with the agent's settings (checked and copied: see struct ahb_settings); returns the agent's
 * end of the event socket (JSON lines), or -1 (ahb_last_error: for a bad setting, its name and range).
 */
AHB_EXPORT int ahb_start(const struct ahb_settings *settings) {
  if (relay.running) {
    snprintf(relay.err, sizeof relay.err, "already started");
    return -1;
  }
  if (take_settings(settings)) return -1;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) goto fail;
  relay.evfd = sv[0];
  fcntl(relay.evfd, F_SETFL, fcntl(relay.evfd, F_GETFL) | O_NONBLOCK);
  int sz = 4 * 1024 * 1024;
  setsockopt(relay.evfd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
  relay.epfd = epoll_create1(EPOLL_CLOEXEC);
  relay.wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  relay.timerfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (relay.epfd < 0 || relay.wakefd < 0 || relay.timerfd < 0) goto fail;
  struct itimerspec ts = {{1, 0}, {1, 0}};
  timerfd_settime(relay.timerfd, 0, &ts, NULL);
  relay.wake_io = (struct io){IO_WAKE, relay.wakefd, 0};
  relay.timer_io = (struct io){IO_TIMER, relay.timerfd, 0};
  relay.ev_io = (struct io){IO_EVENTS, relay.evfd, 0};
  io_set(&relay.wake_io, EPOLLIN);
  io_set(&relay.timer_io, EPOLLIN);
  io_set(&relay.ev_io, EPOLLIN);
  relay.stop = 0;
  relay.events_lost = 0;
  if (pthread_create(&relay.thread, NULL, relay_loop, NULL)) goto fail;
  pthread_setname_np(relay.thread, RELAY_THREAD_NAME); /* what `top -H` and /proc/<pid>/task/<tid>/comm show */
  relay.running = 1;
  return sv[1];
fail:
  snprintf(relay.err, sizeof relay.err, "start: %s", strerror(errno));
  return -1;
}

/** The SPIFFE rule of the server side (exported for tests): NULL when `uri` is a valid ID in `td` (any, if NULL). */
AHB_EXPORT const char *ahb_spiffe_check(const char *uri, const char *td) { return spiffe_check(uri ? uri : "", td && *td ? td : NULL); }

/** Stops the loop (closing every session and stream) and waits for it. */
AHB_EXPORT void ahb_stop(void) {
  if (!relay.running) return;
  struct cmd *stop = cmd_new(CMD_STOP, -1);
  if (stop) enqueue(stop);
  pthread_join(relay.thread, NULL);
  relay.running = 0;
  /* Commands queued after the stop was taken: their fds and contexts are released here. */
  for (struct cmd *c = take_cmds(), *next; c; c = next) {
    next = c->next;
    cmd_free(c);
  }
  close(relay.epfd);
  close(relay.wakefd);
  close(relay.timerfd);
  close(relay.evfd);
  relay.epfd = relay.wakefd = relay.timerfd = relay.evfd = -1;
  close_unsent_fds(); /* fds in event lines the agent never received whole: reset, as nobody else will close them */
  buf_free(&relay.events);
  relay.events_queued = relay.events_sent = 0;
  pthread_mutex_lock(&relay.mu);
  while (relay.ctxs) {
    struct ctx_entry *e = relay.ctxs;
    relay.ctxs = e->next;
    SSL_CTX_free(e->ctx);
    free(e);
  }
  pthread_mutex_unlock(&relay.mu);
}

/**
 * A TLS context for one identity's material (server != 0: the 15008 side), with the suites and ALPN of the settings:
 * only once started. Returns its id, or 0 (ahb_last_error).
 */
AHB_EXPORT uint64_t ahb_ctx_new(int server, const char *chain_pem, const char *key_pem, const char *roots_pem) {
  if (!relay.running) {
    snprintf(relay.err, sizeof relay.err, "not started");
    return 0;
  }
  SSL_CTX *ctx = tls_ctx_new(server, chain_pem, key_pem, roots_pem, relay.err, sizeof relay.err);
  if (!ctx) return 0;
  struct ctx_entry *e = calloc(1, sizeof *e);
  if (!e) {
    SSL_CTX_free(ctx);
    snprintf(relay.err, sizeof relay.err, "out of memory");
    return 0;
  }
  e->ctx = ctx;
  e->id = ++relay.next_id;
  pthread_mutex_lock(&relay.mu);
  e->next = relay.ctxs;
  relay.ctxs = e;
  pthread_mutex_unlock(&relay.mu);
  return e->id;
}

/**
 * Forgets a TLS context (after a certificate renewal). Sessions made with it, and ahb_*_session calls already made with
 * it whose session the loop has not started yet, keep it until they close; later calls with the id fail their session
 * ("unknown TLS context").
 */
AHB_EXPORT void ahb_ctx_free(uint64_t id) {
  pthread_mutex_lock(&relay.mu);
  for (struct ctx_entry **pp = &relay.ctxs; *pp; pp = &(*pp)->next) {
    if ((*pp)->id == id) {
      struct ctx_entry *e = *pp;
      *pp = e->next;
      SSL_CTX_free(e->ctx);
      free(e);
      break;
    }
  }
  pthread_mutex_unlock(&relay.mu);
}

static uint64_t session_cmd(enum cmd_kind kind, uint64_t ctx, int fd, const char *expected) {
  struct cmd *c = cmd_new(kind, fd);
  if (!c) return 0;
  if (cmd_str(&c->a, expected)) {
    cmd_free(c); /* closes fd */
    return 0;
  }
  c->id = ++relay.next_id;
  c->ref = ctx;
  c->ctx = find_ctx(ctx); /* now, on the caller's thread: NULL makes the loop report "unknown TLS context" */
  uint64_t id = c->id;
  enqueue(c);
  return id;
}

/**
 * A client HBONE session over a connected TCP fd (owned from now on); the peer must be `expected_id`. The TLS context is
 * taken when this is called. Returns the session id (0: out of memory, fd closed, no event).
 */
AHB_EXPORT uint64_t ahb_client_session(uint64_t ctx, int fd, const char *expected_id) { return session_cmd(CMD_CLIENT_SESSION, ctx, fd, expected_id); }

/** A server HBONE session over an accepted TCP fd (owned from now on); clients must be in `trust_domain`. Ids as above. */
AHB_EXPORT uint64_t ahb_server_session(uint64_t ctx, int fd, const char *trust_domain) { return session_cmd(CMD_SERVER_SESSION, ctx, fd, trust_domain); }

/**
 * A CONNECT stream on a client session relaying app socket `fd` (owned from now on). headers: "name\nvalue\n...".
 * Queued while the session handshakes, submitted when it is up. Returns the stream id (0: out of memory, fd closed, no
 * event).
 */
AHB_EXPORT uint64_t ahb_client_stream(uint64_t session, int fd, const char *authority, const char *headers) {
  struct cmd *c = cmd_new(CMD_CLIENT_STREAM, fd);
  if (!c) return 0;
  if (cmd_str(&c->a, authority) || cmd_str(&c->b, headers)) {
    cmd_free(c); /* closes fd */
    return 0;
  }
  c->id = ++relay.next_id;
  c->ref = session;
  uint64_t id = c->id;
  enqueue(c);
  return id;
}

/* Queues an answer to server stream `stream` owning `fd`; `n` is the status (CMD_ANSWER) or the timeout (CMD_ANSWER_CONNECT). */
static void queue_answer(enum cmd_kind kind, uint64_t stream, int fd, int n) {
  struct cmd *c = cmd_new(kind, fd);
  if (!c) return;
  c->id = stream;
  c->status = n;
  enqueue(c);
}

/** Answers a server stream's request: 200 with the upstream app socket `fd` (owned), or another status (fd -1). */
AHB_EXPORT void ahb_answer(uint64_t stream, int status, int fd) {
  queue_answer(CMD_ANSWER, stream, fd, status);
}

/**
 * Answers a server stream's request once its upstream is connected: `fd` (owned) is a non-blocking socket whose
 * connect() is in flight (or done). 200 when it connects, 503 when it fails or has not connected within `timeout_ms`
 * (checked once a second); a failed connect is named in the stream's "closed" event (connectFailed). The agent's work
 * on the request ends here.
 */
AHB_EXPORT void ahb_answer_connect(uint64_t stream, int fd, int timeout_ms) {
  queue_answer(CMD_ANSWER_CONNECT, stream, fd, timeout_ms);
}

/** Resets a stream (policy change, or the agent gave up on it): the app socket gets a reset, the peer RST_STREAM. */
AHB_EXPORT void ahb_close_stream(uint64_t stream) {
  struct cmd *c = cmd_new(CMD_CLOSE_STREAM, -1);
  if (!c) return;
  c->id = stream;
  enqueue(c);
}

/** Closes a session: graceful (1: GOAWAY, open streams finish), at once (0), or 2: a server's shutdown notice only. */
AHB_EXPORT void ahb_close_session(uint64_t session, int graceful) {
  struct cmd *c = cmd_new(CMD_CLOSE_SESSION, -1);
  if (!c) return;
  c->id = session;
  c->flag = graceful;
  enqueue(c);
}

/**
 * An outbound listener over a listening TCP socket `fd` (owned from now on; `ipv6`: its family): the loop accepts its
 * connections and reports each in an "accepted" event (the fd, the agent's from then on; the client's address; the
 * original destination), at most `credits` (1 .. MAX_ACCEPT_CREDITS) before ahb_listen_credit grants more. Returns the
 * listener id (0: out of memory or bad credits, fd closed, no event).
 */
AHB_EXPORT uint64_t ahb_listen(int fd, int ipv6, int credits) {
  if (credits < 1 || credits > MAX_ACCEPT_CREDITS) {
    if (fd >= 0) close(fd);
    snprintf(relay.err, sizeof relay.err, "bad credits %d: not within 1 .. %d", credits, MAX_ACCEPT_CREDITS);
    return 0;
  }
  struct cmd *c = cmd_new(CMD_LISTEN, fd);
  if (!c) return 0;
  c->id = ++relay.next_id;
  c->flag = ipv6 ? 1 : 0;
  c->status = credits;
  uint64_t id = c->id;
  enqueue(c);
  return id;
}

/**
 * Grants a listener `n` more reports (one per "accepted" event the agent has taken); it holds at most
 * MAX_ACCEPT_CREDITS. 0 once queued; -1 when memory ran out (nothing granted: the agent grants them again later).
 */
AHB_EXPORT int ahb_listen_credit(uint64_t listener, int n) {
  if (n < 1) return 0;
  struct cmd *c = cmd_new(CMD_LISTEN_CREDIT, -1);
  if (!c) return -1;
  c->id = listener;
  c->status = n > MAX_ACCEPT_CREDITS ? MAX_ACCEPT_CREDITS : n;
  enqueue(c);
  return 0;
}

/**
 * Stops a listener and closes its fd (connections it already reported are the agent's; those still in the socket's
 * queue are the kernel's, or the successor's that holds the same socket). Unknown ids are ignored.
 */
AHB_EXPORT void ahb_unlisten(uint64_t listener) {
  struct cmd *c = cmd_new(CMD_UNLISTEN, -1);
  if (!c) return;
  c->id = listener;
  enqueue(c);
}

/** Live byte counters of a stream: out[0] read from its app socket, out[1] written to it. Returns 0, or -1 if gone. */
AHB_EXPORT int ahb_stream_bytes(uint64_t stream, uint64_t *out) {
  int rc = -1;
  pthread_mutex_lock(&relay.mu);
  for (struct stream *st = relay.all_streams; st; st = st->next_all) {
    if (st->id == stream) {
      out[0] = st->bytes_in;
      out[1] = st->bytes_out;
      rc = 0;
      break;
    }
  }
  pthread_mutex_unlock(&relay.mu);
  return rc;
}
