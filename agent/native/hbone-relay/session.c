/*
 * HTTP/2 sessions (nghttp2 over the TLS of tls.c): the callbacks, the session's settings, reading frames from TLS and
 * writing them to it, the server's request reports, and a client's stream submission.
 * Ownership: loop thread. A session is linked on relay.sessions by cmd_session (loop.c) and freed by reap (loop.c); its
 * nghttp2 session refers to its streams (stream user data, data sources) until on_stream_close, so nothing here frees a
 * stream or a session: a failure marks it (session_fail, stream_abort) and reap frees it at the end of the loop turn.
 */
#include "relay.h"

#include <errno.h>
#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

struct session *find_session(uint64_t id) {
  for (struct session *s = relay.sessions; s; s = s->next)
    if (s->id == id) return s;
  return NULL;
}

static struct stream *find_stream(struct session *s, int32_t h2id) {
  struct stream *st = s->h2 ? nghttp2_session_get_stream_user_data(s->h2, h2id) : NULL;
  return st && !st->h2_closed ? st : NULL;
}

/* Marks the session dead (freed by reap), keeping the first reason given. */
void session_fail(struct session *s, const char *why) {
  if (!s->error[0]) {
    size_t n = strlen(why);
    if (n >= sizeof s->error) n = sizeof s->error - 1;
    memcpy(s->error, why, n);
    s->error[n] = 0;
  }
  s->dead = 1;
}

/* ---------- nghttp2 callbacks (they mark, never free) ---------- */

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
      if (s->server) ev_up(s);
    }
    ev_settings(s->id, nghttp2_session_get_remote_settings(h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS));
    return 0;
  }
  if (f->hd.type == NGHTTP2_GOAWAY) {
    ev_goaway(s->id, f->goaway.error_code);
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
  } else if (f->hd.type == NGHTTP2_HEADERS && s->server && f->headers.cat == NGHTTP2_HCAT_REQUEST && !st->as_server.fresh) {
    /* Reported once the whole read is processed, if the stream is still open then (session_report_requests). */
    st->as_server.fresh = 1;
    *s->as_server.fresh_tail = st;
    s->as_server.fresh_tail = &st->as_server.next_fresh;
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
  if (!st || st->errored || (st->io.fd < 0 && st->as_server.answered) || (!s->server && st->status != 200)) {
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
    if (buf_append(&st->out, data + done, len - done)) {
      /* Out of memory: this stream fails (its credit given back), the session goes on. */
      stream_abort(st, NGHTTP2_INTERNAL_ERROR);
      nghttp2_session_consume(h2, sid, len - done);
      return 0;
    }
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
  if (code == NGHTTP2_REFUSED_STREAM && !s->server)
    stream_hand_back(st, "the stream was refused (REFUSED_STREAM) before anything was sent");
  if (code) {
    /* Reset by the peer (or by us): unwritten bytes are dropped (their connection credit given back), the app sees a reset. */
    st->errored = 1;
    stream_drop_out(st);
  }
  return 0;
}

/*
 * A frame nghttp2 did not send. A client's CONNECT (request HEADERS) not sent because the session got a GOAWAY is then
 * closed with REFUSED_STREAM and handed back (on_stream_close); one not sent for a fault of its own (a header list
 * larger than nghttp2 sends) would fail alike elsewhere: its status is reported here, so it is not handed back.
 */
static int on_frame_not_send(nghttp2_session *h2, const nghttp2_frame *f, int lib_error, void *ud) {
  (void)h2;
  struct session *s = ud;
  if (s->server || f->hd.type != NGHTTP2_HEADERS || lib_error == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED) return 0;
  struct stream *st = find_stream(s, f->hd.stream_id);
  if (st) {
    char why[200];
    snprintf(why, sizeof why, "the CONNECT could not be sent: %s", nghttp2_strerror(lib_error));
    stream_report_status(st, -1, why);
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
  struct stream *st = stream_new(++relay.next_id, s, -1);
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
  if (st->header_bytes > (s->server ? relay.cfg.server_max_header_list : relay.cfg.client_max_header_list)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  if (!s->server) {
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) {
      int v = 0;
      for (size_t i = 0; i < vlen && i < 4; i++) v = v * 10 + (value[i] - '0');
      st->status = v;
    }
    return 0;
  }
  /* A request field we keep but cannot copy (out of memory) resets the stream, like one too long. */
  if (nlen == 7 && memcmp(name, ":method", 7) == 0) {
    if (vlen > relay.cfg.max_method) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    free(st->as_server.method);
    if (!(st->as_server.method = dupn(value, vlen))) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  } else if (nlen == 10 && memcmp(name, ":authority", 10) == 0) {
    if (vlen > relay.cfg.max_authority) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    free(st->as_server.authority);
    if (!(st->as_server.authority = dupn(value, vlen))) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  /* Other headers: the agent reads none of them, so they are only counted. */
  return 0;
}

/* The callbacks of every session, made once (loop thread); NULL when memory ran out. */
static nghttp2_session_callbacks *callbacks(void) {
  static nghttp2_session_callbacks *cbs;
  if (cbs || nghttp2_session_callbacks_new(&cbs)) return cbs;
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
  nghttp2_session_callbacks_set_data_source_read_length_callback(cbs, read_length_cb);
  nghttp2_session_callbacks_set_send_data_callback(cbs, send_data_cb);
  return cbs;
}

/* ---------- the session's life ---------- */

/* After the TLS handshake and the peer check: start HTTP/2 with HBONE's settings (relay.cfg, from the agent). 0, or -1 (session failed). */
static int session_start_h2(struct session *s) {
  nghttp2_session_callbacks *cbs = callbacks();
  nghttp2_option *opt = NULL;
  if (!cbs || nghttp2_option_new(&opt)) {
    session_fail(s, "nghttp2 session");
    return -1;
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_peer_max_concurrent_streams(opt, relay.cfg.peer_max_streams_before_settings);
  int rc = s->server ? nghttp2_session_server_new2(&s->h2, cbs, s, opt) : nghttp2_session_client_new2(&s->h2, cbs, s, opt);
  nghttp2_option_del(opt);
  if (rc) {
    s->h2 = NULL;
    session_fail(s, "nghttp2 session");
    return -1;
  }
  nghttp2_settings_entry iv[4];
  size_t n = 0;
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, relay.cfg.stream_window};
  iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_FRAME_SIZE, relay.cfg.max_frame_size};
  if (s->server) {
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, relay.cfg.server_max_streams};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, relay.cfg.server_max_header_list};
  } else {
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    iv[n++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, relay.cfg.client_max_header_list};
  }
  nghttp2_submit_settings(s->h2, NGHTTP2_FLAG_NONE, iv, n);
  nghttp2_session_set_local_window_size(s->h2, NGHTTP2_FLAG_NONE, 0, (int32_t)relay.cfg.connection_window);
  s->up = 1;
  s->last_ping_ms = s->last_active_ms = now_ms();
  /* A client is up once TLS is; a server session once the client's SETTINGS came too (its handshake deadline runs until then). */
  if (!s->server) ev_up(s);
  return 0;
}

static void session_handshake(struct session *s) {
  if (tls_handshake_step(s) <= 0) return;
  s->handshaking = 0;
  if (tls_check_peer(s) || session_start_h2(s)) return;
  struct stream *p = s->as_client.pending;
  s->as_client.pending = NULL;
  while (p) {
    struct stream *next = p->next_in_session;
    p->next_in_session = s->streams;
    s->streams = p;
    if (!p->dead) client_submit(s, p); /* an aborted one stays unsubmitted: reap frees it, nghttp2 never saw it */
    p = next;
  }
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
 * dials nothing for it; past relay.cfg.server_max_streams requests the agent is still working on, new ones are refused
 * (REFUSED_STREAM), also unreported. Unreported streams are reaped without a "closed" event.
 */
static void session_report_requests(struct session *s) {
  struct stream *st = s->as_server.fresh;
  s->as_server.fresh = NULL;
  s->as_server.fresh_tail = &s->as_server.fresh;
  while (st) {
    struct stream *next = st->as_server.next_fresh;
    st->as_server.next_fresh = NULL;
    st->as_server.fresh = 0;
    if (s->dead || st->dead || st->h2_closed || st->errored) {
      /* Gone already: nothing for the agent to do. */
    } else if ((uint32_t)s->as_server.awaiting >= relay.cfg.server_max_streams) {
      stream_abort(st, NGHTTP2_REFUSED_STREAM);
    } else {
      ev_request(s, st);
      st->reported = 0; /* from now on the agent knows this stream: tell it how it ends */
      st->as_server.awaiting = 1;
      s->as_server.awaiting++;
    }
    st = next;
  }
}

/* Reads and decrypts what the peer sent (a bounded number of records a turn), feeding HTTP/2. */
static void session_read_frames(struct session *s) {
  static unsigned char rbuf[TLS_READ]; /* loop thread only */
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
      tls_error_string(why, sizeof why, "TLS read");
      session_fail(s, why);
    }
    return;
  }
}

/* Serialises pending HTTP/2 frames and writes them through TLS; what the socket does not take waits in wbuf. */
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

void session_flush(struct session *s) {
  if (s->dead || !s->h2) return;
  session_flush_frames(s);
  if (!s->dead && BIO_wpending(SSL_get_wbio(s->ssl)) > 0) BIO_flush(SSL_get_wbio(s->ssl)); /* EAGAIN: EPOLLOUT */
}

void session_update(struct session *s) {
  if (s->dead) return;
  uint32_t m = EPOLLIN;
  if (s->handshaking) {
    if (SSL_want_write(s->ssl)) m |= EPOLLOUT;
  } else if (s->wbuf.len || BIO_wpending(SSL_get_wbio(s->ssl)) > 0) {
    m |= EPOLLOUT;
  }
  io_set(&s->io, m);
}

/* Everything the session's socket allows now: the handshake, then reading (and reporting requests) and writing. */
void session_pump(struct session *s) {
  if (s->dead) return;
  if (s->handshaking) {
    session_handshake(s);
    if (s->handshaking || s->dead) {
      session_update(s);
      return;
    }
  }
  session_read_frames(s);
  if (s->server) session_report_requests(s);
  session_flush(s);
  if (!s->dead && s->graceful && !s->streams && !s->as_client.pending) session_fail(s, "closed");
  if (!s->dead && !nghttp2_session_want_read(s->h2) && !nghttp2_session_want_write(s->h2) && !s->wbuf.len) session_fail(s, "closed");
  session_update(s);
}

/* A graceful close: GOAWAY (NO_ERROR) after the last stream the peer opened; open streams finish, then the session ends. */
void session_goaway(struct session *s) {
  s->graceful = 1;
  nghttp2_submit_goaway(s->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(s->h2), NGHTTP2_NO_ERROR, NULL, 0);
  session_pump(s);
}

/* Submits a client stream's CONNECT (its header list is freed: nghttp2 copied it); a failure reports and aborts it. */
void client_submit(struct session *s, struct stream *st) {
  nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read_cb};
  int32_t sid = s->h2 ? nghttp2_submit_request(s->h2, NULL, st->as_client.nva, st->as_client.nvlen, &dp, st) : -1;
  free(st->as_client.nva);
  free(st->as_client.nvstore);
  st->as_client.nva = NULL;
  st->as_client.nvstore = NULL;
  if (sid < 0) {
    stream_report_status(st, -1, s->h2 ? nghttp2_strerror(sid) : "session not up");
    stream_abort(st, 0);
    return;
  }
  st->h2id = sid;
}
