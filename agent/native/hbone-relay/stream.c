/*
 * Streams: the app socket side of one HBONE CONNECT (reading the app into `in`, writing `out` to it, closing it with a
 * FIN or a reset) and DATA frames without copies (nghttp2's data source callbacks).
 * Ownership: loop thread. A stream belongs to its session's lists and to relay.all_streams (linked and unlinked under
 * relay.mu, for ahb_stream_bytes); it owns its app fd, buffers and request strings. It is freed only by stream_free,
 * called from reap once it is dead (nghttp2 no longer refers to it) or with its whole session.
 */
#include "relay.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* Makes close() send a TCP reset instead of a FIN (the app must see that its connection failed). */
void set_reset_on_close(int fd) {
  struct linger l = {1, 0};
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

/* Closes an app socket nobody will relay with a reset: the app sees its connection refused, not one that hangs or ends. */
void close_with_reset(int fd) {
  if (fd < 0) return;
  set_reset_on_close(fd);
  close(fd);
}

/* An fd handed to the library: non-blocking, and (TCP) without Nagle's delay when `nodelay`. */
void set_nonblock_nodelay(int fd, int nodelay) {
  if (fd < 0) return;
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
}

/* A stream on s (linked first in s->streams and in relay.all_streams), owning fd; NULL when memory runs out. */
struct stream *stream_new(uint64_t id, struct session *s, int fd) {
  struct stream *st = calloc(1, sizeof *st);
  if (!st) return NULL;
  st->io.kind = IO_APP;
  st->io.fd = fd;
  st->as_server.connect_io = (struct io){IO_CONNECT, -1, 0};
  st->id = id;
  st->h2id = -1;
  st->s = s;
  st->next_in_session = s->streams;
  s->streams = st;
  pthread_mutex_lock(&relay.mu);
  st->next_all = relay.all_streams;
  relay.all_streams = st;
  pthread_mutex_unlock(&relay.mu);
  return st;
}

struct stream *find_stream_any(uint64_t id) {
  for (struct session *s = relay.sessions; s; s = s->next) {
    for (struct stream *st = s->streams; st; st = st->next_in_session)
      if (st->id == id) return st;
    for (struct stream *st = s->as_client.pending; st; st = st->next_in_session)
      if (st->id == id) return st;
  }
  return NULL;
}

/* Frees a stream its session has already unlinked (reap). */
void stream_free(struct stream *st) {
  pthread_mutex_lock(&relay.mu);
  for (struct stream **pp = &relay.all_streams; *pp; pp = &(*pp)->next_all) {
    if (*pp == st) {
      *pp = st->next_all;
      break;
    }
  }
  pthread_mutex_unlock(&relay.mu);
  io_close(&st->io);
  io_close(&st->as_server.connect_io); /* a connect still in flight when the stream ended */
  buf_free(&st->in);
  buf_free(&st->out);
  free(st->as_server.method);
  free(st->as_server.authority);
  free(st->as_client.authority);
  free(st->as_client.nva);
  free(st->as_client.nvstore);
  free(st);
}

/* A client stream's one "status" event: the answer's status, or -1 and why no answer will come. */
void stream_report_status(struct stream *st, int status, const char *why) {
  if (st->as_client.status_reported || st->s->server) return;
  st->as_client.status_reported = 1;
  ev_status(st->id, status, why, -1);
}

/*
 * A client stream refused before it carried anything (REFUSED_STREAM from the peer, or never started because the
 * session got a GOAWAY): HTTP/2 says the request was not processed, and the app socket was never read, so the agent may
 * open the stream again elsewhere. Its "status" event hands the app socket back (the library forgets it); 1 if the
 * stream's status was reported here (its fd handed back, or reset-closed if the event could not be queued), 0 if the
 * stream is not one to hand back. Before its status is reported a client stream has moved no byte (the app is read and
 * written only once a 200 was reported), so "no status yet and the app socket still open" is the whole condition. Not
 * while the loop stops: its last events are never read, so a handed-back fd would leak; such a stream is reset.
 */
int stream_hand_back(struct stream *st, const char *why) {
  if (st->s->server || st->as_client.status_reported || st->io.fd < 0 || relay.stop) return 0;
  io_set(&st->io, 0);
  int fd = st->io.fd;
  st->io.fd = -1;
  st->as_client.status_reported = 1;
  st->errored = 1;
  if (ev_status(st->id, -1, why, fd)) close_with_reset(fd); /* not handed over */
  return 1;
}

/* Why a client stream that is going away never got an answer. */
void stream_report_unanswered(struct stream *st, const char *session_error) {
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

/* A stream's one "closed" event (not for a stream the agent never heard of: `reported` is set for those). */
void stream_report_closed(struct stream *st, const char *why) {
  if (st->reported) return;
  st->reported = 1;
  int failed = st->as_server.connect_errno != 0;
  char connect_why[96];
  if (failed && !why) {
    const char *name = strerrorname_np(st->as_server.connect_errno), *desc = strerrordesc_np(st->as_server.connect_errno);
    snprintf(connect_why, sizeof connect_why, "connect %s (%s)", name ? name : "?", desc ? desc : "unknown error");
    why = connect_why;
  }
  ev_closed(st->id, st->bytes_in, st->bytes_out, st->h2_error, st->errored, failed, why);
}

void stream_update(struct stream *st) {
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
void stream_drop_out(struct stream *st) {
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
void stream_abort(struct stream *st, uint32_t code) {
  st->errored = 1;
  io_close(&st->as_server.connect_io); /* an upstream connect in flight (ahb_answer_connect) ends with the stream */
  if (st->h2id > 0 && !st->h2_closed && st->s->h2) nghttp2_submit_rst_stream(st->s->h2, NGHTTP2_FLAG_NONE, st->h2id, code);
  if (st->io.fd >= 0) {
    set_reset_on_close(st->io.fd);
    io_close(&st->io);
  }
  stream_drop_out(st);
  if (st->h2id < 0 || st->h2_closed || !st->s->h2) st->dead = 1;
}

/* A stream is over when HTTP/2 is done with it and every byte for the app was written (or the app is gone). */
void stream_check_done(struct stream *st) {
  if (st->dead) return;
  int h2_done = st->h2_closed || st->h2id < 0;
  if (!h2_done) return;
  if (st->as_server.awaiting) {
    /* The agent is still working on its request (dialing the app): it hears of the end now, and the stream is kept
     * until it answers (the answer is then dropped), so what it is working on per session stays bounded. */
    stream_report_closed(st, NULL);
    return;
  }
  if (st->io.fd >= 0 && st->out.len && !st->errored) return;
  if (st->io.fd >= 0) {
    if (st->h2_error || st->errored) set_reset_on_close(st->io.fd);
    io_close(&st->io);
  }
  st->dead = 1;
}

void stream_write_out(struct stream *st) {
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

/*
 * Room at the end of a stream's `in` buffer (allocated on first use, data moved back to HEADROOM when the end is near);
 * 0 only when the buffer could not be allocated.
 */
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

void stream_read_app(struct stream *st) {
  struct session *s = st->s;
  int got = 0;
  while (!st->app_eof && st->in.len < APP_BUF && st->io.fd >= 0) {
    size_t room = in_room(st);
    if (!room) {
      stream_abort(st, NGHTTP2_INTERNAL_ERROR); /* out of memory: the stream fails, its session goes on */
      return;
    }
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
ssize_t data_read_cb(nghttp2_session *h2, int32_t sid, uint8_t *out, size_t len, uint32_t *flags, nghttp2_data_source *src, void *ud) {
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

int send_data_cb(nghttp2_session *h2, nghttp2_frame *f, const uint8_t *framehd, size_t length, nghttp2_data_source *src, void *ud) {
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
  if (done < total && buf_append(&s->wbuf, start + done, total - done)) {
    session_fail(s, "out of memory"); /* part of a frame may be out: the connection cannot go on */
    return NGHTTP2_ERR_CALLBACK_FAILURE;
  }
  in_consume(st, length);
  stream_update(st);
  return 0;
}

/* DATA frames of 64 KiB with their header (four full TLS records), or as much as flow control lets through. */
ssize_t read_length_cb(nghttp2_session *h2, uint8_t type, int32_t sid, int32_t sw, int32_t cw, uint32_t remote_max, void *ud) {
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
