/*
 * The loop thread: the epoll set, the commands the API queued (run in call order), the once-a-second timer
 * (handshake deadlines, linger, idle sessions, keepalive PINGs), and reaping, which frees what the turn marked dead.
 * Ownership: loop thread, except `relay` itself (defined here; its rules are in relay.h) and take_cmds, which ahb_stop
 * also calls once the loop has ended. A command owns its fd and strings until its cmd_* hands them to a session or
 * stream (setting them to -1/NULL in the command) or closes them; cmd_free frees what is left.
 */
#include "relay.h"

#include <errno.h>
#include <malloc.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct relay_state relay = {
    .mu = PTHREAD_MUTEX_INITIALIZER, .epfd = -1, .wakefd = -1, .timerfd = -1, .evfd = -1};

/* ---------- epoll ---------- */

void io_set(struct io *io, uint32_t mask) {
  if (io->fd < 0 || io->mask == mask) return;
  struct epoll_event e = {.events = mask, .data.ptr = io};
  if (!mask) {
    epoll_ctl(relay.epfd, EPOLL_CTL_DEL, io->fd, NULL);
  } else if (!io->mask) {
    epoll_ctl(relay.epfd, EPOLL_CTL_ADD, io->fd, &e);
  } else {
    epoll_ctl(relay.epfd, EPOLL_CTL_MOD, io->fd, &e);
  }
  io->mask = mask;
}

void io_close(struct io *io) {
  if (io->fd < 0) return;
  io_set(io, 0);
  close(io->fd);
  io->fd = -1;
}

/* ---------- reaping ---------- */

/* Frees the streams of s that are done on their own, and queued ones aborted before the handshake ended; a count. */
static size_t reap_streams(struct session *s) {
  size_t freed = 0;
  for (int pass = 0; pass < 2; pass++) {
    for (struct stream **pp = pass ? &s->as_client.pending : &s->streams; *pp;) {
      struct stream *st = *pp;
      if (!pass) stream_check_done(st);
      if (st->dead) {
        *pp = st->next_in_session;
        if (!s->server) stream_report_unanswered(st, NULL);
        stream_report_closed(st, NULL);
        if (st->as_server.awaiting) s->as_server.awaiting--; /* closed by the agent before it answered */
        stream_free(st);
        freed++;
        s->last_active_ms = now_ms();
      } else {
        pp = &st->next_in_session;
      }
    }
  }
  return freed;
}

/* Frees a dead session unlinked from relay.sessions: a best-effort GOAWAY, its streams, then the session; a count. */
static size_t session_free(struct session *s) {
  size_t freed = 0;
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
    struct stream *st = pass ? s->as_client.pending : s->streams;
    while (st) {
      struct stream *next = st->next_in_session;
      freed++;
      if (!s->server) stream_report_unanswered(st, s->error[0] ? s->error : "HBONE session closed");
      st->errored = 1;
      set_reset_on_close(st->io.fd);
      stream_report_closed(st, s->error);
      stream_free(st);
      st = next;
    }
  }
  ev_session_closed(s);
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
  return freed;
}

/* The end of a loop turn: frees the streams and sessions marked dead during it (never inside an nghttp2 callback). */
static void reap(void) {
  static size_t freed_streams; /* since the last trim */
  static int64_t trimmed_ms;
  int freed = 0;
  for (struct session **sp = &relay.sessions; *sp;) {
    struct session *s = *sp;
    freed_streams += reap_streams(s);
    if (!s->dead) {
      sp = &s->next;
      continue;
    }
    *sp = s->next;
    freed_streams += session_free(s);
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

static void cmd_session(struct cmd *c, int server) {
  struct session *s = calloc(1, sizeof *s);
  SSL_CTX *ctx = c->ctx; /* referenced by the API call, so freeing the context since then does not matter */
  c->ctx = NULL;
  if (!s || !ctx) {
    if (ctx) SSL_CTX_free(ctx);
    close(c->fd);
    c->fd = -1;
    free(s);
    ev_session_failed(c->id, ctx ? "out of memory" : "unknown TLS context");
    return;
  }
  s->id = c->id;
  s->server = server;
  s->as_server.fresh_tail = &s->as_server.fresh;
  s->io.kind = IO_SESSION;
  s->io.fd = c->fd;
  c->fd = -1;
  s->expected = c->a;
  c->a = NULL;
  s->handshaking = 1;
  if (relay.cfg.handshake_timeout_ms > 0) s->deadline_ms = now_ms() + relay.cfg.handshake_timeout_ms;
  s->next = relay.sessions;
  relay.sessions = s;
  set_nonblock_nodelay(s->io.fd, 1);
  int rc = tls_session_new(s, ctx);
  SSL_CTX_free(ctx); /* the SSL object holds its own reference */
  if (rc) return;
  if (server) {
    /* Nothing to do before the ClientHello: wait for it, so a client that never sends one costs no TLS read buffer. */
    io_set(&s->io, EPOLLIN);
    return;
  }
  session_pump(s);
}

/* "name\nvalue\n..." into an nghttp2 header list after :method CONNECT and :authority (st takes headers). */
static int build_nva(struct stream *st, const char *authority, char *headers) {
  size_t cap = 2;
  for (const char *p = headers; p && *p; p++)
    if (*p == '\n') cap++;
  st->as_client.nva = calloc(cap, sizeof *st->as_client.nva);
  if (!st->as_client.nva) return -1;
  st->as_client.nvstore = headers;
  nghttp2_nv *nva = st->as_client.nva;
  size_t n = 0;
  nva[n++] = (nghttp2_nv){(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
  nva[n++] = (nghttp2_nv){(uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority), NGHTTP2_NV_FLAG_NO_COPY_NAME};
  char *p = headers;
  while (p && *p && n < cap) {
    char *name = p, *nl = strchr(p, '\n');
    if (!nl) break;
    *nl = 0;
    char *value = nl + 1, *vl = strchr(value, '\n');
    if (vl) *vl = 0;
    nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value), NGHTTP2_NV_FLAG_NONE};
    p = vl ? vl + 1 : NULL;
  }
  st->as_client.nvlen = n;
  return 0;
}

/* A client stream that cannot be made: its status and closed events, and its app socket reset. */
static void refuse_client_stream(struct cmd *c, const char *why) {
  ev_status(c->id, -1, why, -1);
  ev_closed(c->id, 0, 0, 0, 1, 0, why);
  close_with_reset(c->fd);
  c->fd = -1;
}

static void cmd_client_stream(struct cmd *c) {
  struct session *s = find_session(c->ref);
  if ((!s || s->dead) && c->fd >= 0 && !(s && s->server) && !relay.stop) {
    /* The session ended before this stream reached it: nothing was sent, the app socket goes back to the agent (if the
     * event could not be queued it stays the command's, and cmd_free closes it). */
    if (ev_status(c->id, -1, "the HBONE session closed before the stream was opened", c->fd) == 0) c->fd = -1;
    else set_reset_on_close(c->fd);
    ev_closed(c->id, 0, 0, 0, 1, 0, "handed back");
    return;
  }
  if (!s || s->dead || s->server) {
    refuse_client_stream(c, s && s->dead && s->error[0] ? s->error : s && s->server ? "not a client session" : "HBONE session closed");
    return;
  }
  struct stream *st = stream_new(c->id, s, c->fd);
  if (!st) {
    refuse_client_stream(c, "out of memory");
    return;
  }
  c->fd = -1;
  set_nonblock_nodelay(st->io.fd, 1);
  /* stream_new linked it into s->streams; a session still handshaking keeps it on the pending list instead. */
  if (build_nva(st, c->a, c->b)) {
    stream_abort(st, 0);
    return;
  }
  c->b = NULL;
  st->as_client.authority = c->a;
  c->a = NULL;
  if (s->handshaking) {
    s->streams = st->next_in_session;
    st->next_in_session = s->as_client.pending;
    s->as_client.pending = st;
    return;
  }
  client_submit(s, st);
  session_flush(s);
  session_update(s);
}

/* The stream of an answer: the server stream `id`, the agent's work on it over (whether it is still open or not). */
static struct stream *answered_stream(uint64_t id) {
  struct stream *st = find_stream_any(id);
  if (st && st->as_server.awaiting) {
    st->as_server.awaiting = 0;
    st->s->as_server.awaiting--;
  }
  return st;
}

/* Whether a server stream's request can still be answered: once, while HTTP/2 still has the stream. */
static int answerable(const struct stream *st) {
  return st && st->s->server && st->s->h2 && st->h2id > 0 && !st->dead && !st->h2_closed && !st->errored &&
         !st->as_server.answered && st->as_server.connect_io.fd < 0;
}

/* Answers a server stream's request (see answerable): 200 relaying `*fd` (taken), or `status` without one. */
static void answer_stream(struct stream *st, int status_code, int *fd) {
  struct session *s = st->s;
  st->as_server.answered = 1;
  char status[8];
  snprintf(status, sizeof status, "%d", status_code);
  nghttp2_nv nva[] = {{(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE}};
  st->status = status_code;
  if (status_code == 200 && *fd >= 0) {
    st->io.fd = *fd;
    *fd = -1;
    set_nonblock_nodelay(st->io.fd, 1);
    st->relaying = 1;
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read_cb};
    nghttp2_submit_response(s->h2, st->h2id, nva, 1, &dp);
    stream_write_out(st); /* DATA that came before the answer */
  } else {
    stream_drop_out(st); /* DATA that came before a refusal will never be read: give its credit back */
    nghttp2_submit_response(s->h2, st->h2id, nva, 1, NULL);
  }
  stream_update(st);
  session_flush(s);
  session_update(s);
}

static void cmd_answer(struct cmd *c) {
  struct stream *st = answered_stream(c->id);
  if (!answerable(st)) return; /* anything else is ignored (c's fd is closed with it) */
  answer_stream(st, c->status, &c->fd);
}

/* The upstream connect of a stream ended: `err` 0 = connected (answered 200), else failed (503, named in "closed"). */
static void connect_done(struct stream *st, int err) {
  struct io *cio = &st->as_server.connect_io;
  int fd = cio->fd;
  io_set(cio, 0);
  cio->fd = -1;
  if (err) {
    close(fd);
    fd = -1;
  }
  if (!answerable(st)) {
    if (fd >= 0) close(fd);
    return; /* the stream ended first: its end is its own, not the connect's */
  }
  if (err) st->as_server.connect_errno = err;
  answer_stream(st, err ? 503 : 200, &fd);
}

static void cmd_answer_connect(struct cmd *c) {
  struct stream *st = answered_stream(c->id);
  if (!answerable(st) || c->fd < 0) return;
  struct io *cio = &st->as_server.connect_io;
  cio->fd = c->fd;
  c->fd = -1;
  st->as_server.connect_deadline_ms = now_ms() + (c->status > 0 ? c->status : 0); /* c->status: the timeout, ms */
  io_set(cio, EPOLLOUT); /* writable (or an error) once the connect ended */
}

static void on_connect_event(struct stream *st) {
  if (st->dead) {
    io_close(&st->as_server.connect_io); /* level-triggered: it would be reported again until the stream is freed */
    return;
  }
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(st->as_server.connect_io.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) err = errno;
  connect_done(st, err);
}

static void cmd_close_stream(struct cmd *c) {
  struct stream *st = find_stream_any(c->id);
  if (!st || st->dead) return;
  stream_abort(st, NGHTTP2_CANCEL);
  if (st->s->h2 && !st->s->handshaking) {
    session_flush(st->s);
    session_update(st->s);
  }
}

static void cmd_close_session(struct cmd *c) {
  struct session *s = find_session(c->id);
  if (!s || s->dead) return;
  if (c->flag == 2) {
    /* A shutdown notice (GOAWAY with the highest stream id): the peer opens no new streams, yet those already on their
       way are still served; the final GOAWAY (flag 1) follows a round trip later. Only for a server session that is up:
       one still in its handshake is left to finish it (the final close decides), and a client session ignores it. */
    if (s->up && s->server) {
      nghttp2_submit_shutdown_notice(s->h2);
      session_pump(s);
    }
  } else if (c->flag && s->up) {
    session_goaway(s);
  } else {
    session_fail(s, "closed by the agent");
  }
}

static void run_cmd(struct cmd *c) {
  switch (c->kind) {
  case CMD_CLIENT_SESSION: cmd_session(c, 0); break;
  case CMD_SERVER_SESSION: cmd_session(c, 1); break;
  case CMD_CLIENT_STREAM: cmd_client_stream(c); break;
  case CMD_ANSWER: cmd_answer(c); break;
  case CMD_ANSWER_CONNECT: cmd_answer_connect(c); break;
  case CMD_CLOSE_STREAM: cmd_close_stream(c); break;
  case CMD_CLOSE_SESSION: cmd_close_session(c); break;
  case CMD_LISTEN: cmd_listen(c); break;
  case CMD_LISTEN_CREDIT: cmd_listen_credit(c); break;
  case CMD_UNLISTEN: cmd_unlisten(c); break;
  case CMD_STOP: relay.stop = 1; break;
  }
}

/* Frees a command and what it still owns: its fd (closed), strings and context reference. */
void cmd_free(struct cmd *c) {
  if (c->fd >= 0) close(c->fd);
  if (c->ctx) SSL_CTX_free(c->ctx);
  free(c->a);
  free(c->b);
  free(c);
}

/* The queued commands, oldest first, taken off the queue (the caller owns them). */
struct cmd *take_cmds(void) {
  pthread_mutex_lock(&relay.mu);
  struct cmd *c = relay.cmds;
  relay.cmds = relay.cmds_tail = NULL;
  pthread_mutex_unlock(&relay.mu);
  return c;
}

static void drain_cmds(void) {
  uint64_t v;
  if (read(relay.wakefd, &v, sizeof v) < 0 && errno != EAGAIN) return;
  for (struct cmd *c = take_cmds(), *next; c; c = next) {
    next = c->next;
    run_cmd(c);
    cmd_free(c);
  }
}

/* ---------- the timer ---------- */

static void keepalive_tick(void) {
  uint64_t v;
  if (read(relay.timerfd, &v, sizeof v) < 0) return;
  int64_t now = now_ms();
  int linger = relay.cfg.unread_linger_ms, idle = relay.cfg.idle_timeout_ms;
  listener_tick(now);
  for (struct session *s = relay.sessions; s; s = s->next) {
    if (s->dead) continue;
    /* A TLS + HTTP/2 handshake that has not finished by its deadline (a silent or slow client holds memory and an fd). */
    if (s->deadline_ms && !s->ready && now >= s->deadline_ms) {
      char why[120];
      snprintf(why, sizeof why, "HBONE handshake did not finish within %d ms", (int)relay.cfg.handshake_timeout_ms);
      s->timed_out = 1;
      session_fail(s, why);
      continue;
    }
    if (!s->up) continue;
    /* Upstream connects past their deadline (ahb_answer_connect): 503, as a refused one. */
    if (s->server) {
      for (struct stream *st = s->streams; st; st = st->next_in_session) {
        if (!st->dead && st->as_server.connect_io.fd >= 0 && now >= st->as_server.connect_deadline_ms) connect_done(st, ETIMEDOUT);
      }
    }
    /* Streams closed in order whose app stopped reading: their unread bytes hold connection credit; bounded. */
    if (linger > 0) {
      for (struct stream *st = s->streams; st; st = st->next_in_session) {
        if (!st->dead && st->h2_closed && st->out.len && st->closed_ms && now - st->closed_ms >= linger) stream_abort(st, 0);
      }
    }
    /* A server session without streams for the idle limit is closed (GOAWAY); clients close theirs sooner (5 min). */
    if (idle > 0 && s->server && s->ready && !s->graceful && !s->streams && now - s->last_active_ms >= idle) {
      session_goaway(s);
      continue;
    }
    if (s->ping_sent_ms && now - s->ping_sent_ms >= relay.cfg.keepalive_timeout_ms) {
      session_fail(s, "HBONE peer did not answer a PING");
      continue;
    }
    if (!s->ping_sent_ms && now - s->last_ping_ms >= relay.cfg.keepalive_interval_ms) {
      s->last_ping_ms = now;
      s->ping_sent_ms = now;
      nghttp2_submit_ping(s->h2, NGHTTP2_FLAG_NONE, NULL);
    }
    session_flush(s);
    session_update(s);
  }
}

/* ---------- the loop ---------- */

static void on_app_event(struct stream *st, uint32_t e) {
  if (st->dead) return;
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
}

void *relay_loop(void *arg) {
  (void)arg;
  struct epoll_event evs[64];
  while (!relay.stop) {
    int n = epoll_wait(relay.epfd, evs, 64, -1);
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
          ssize_t r = recv(relay.evfd, tmp, sizeof tmp, MSG_DONTWAIT);
          if (r == 0) relay.stop = 1; /* the agent closed its end */
        }
        break;
      case IO_SESSION: session_pump(container_of(io, struct session, io)); break;
      case IO_APP: on_app_event(container_of(io, struct stream, io), e); break;
      case IO_CONNECT: on_connect_event(container_of(io, struct stream, as_server.connect_io)); break;
      case IO_LISTEN: listener_accept(container_of(io, struct listener, io)); break;
      }
    }
    /* Streams whose app socket drained may now be complete; sessions may need a last flush. */
    for (struct session *s = relay.sessions; s; s = s->next) {
      if (s->dead || !s->h2 || s->handshaking) continue;
      /* A read that stopped at its per-turn bound may leave records OpenSSL already took off the socket (read-ahead):
       * epoll will not report them, so they are processed now rather than when the peer happens to send more. */
      if (SSL_has_pending(s->ssl)) session_pump(s);
      if (s->dead) continue;
      for (struct stream *st = s->streams; st; st = st->next_in_session) stream_check_done(st);
      if (s->graceful && !s->streams) session_fail(s, "closed");
    }
    reap();
    reap_listeners();
    ev_flush();
  }
  /* Stopped: close everything. */
  listeners_free();
  for (struct session *s = relay.sessions; s; s = s->next) session_fail(s, "data plane stopped");
  reap();
  if (relay.events_lost) {
    /* The agent can no longer trust the events: it gets what was queued, then the end of the socket. */
    ev_flush();
    shutdown(relay.evfd, SHUT_WR);
  }
  return NULL;
}
