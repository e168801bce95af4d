/*
 * Byte buffers, and the events the loop sends to the agent: one JSON object a line on the event socket, every line
 * written by the bounded JSON writer below (strings escaped; a line never longer than EVENT_LINE_MAX).
 * Ownership: loop thread only (relay.events, relay.events_lost). An event that cannot be queued (out of memory) breaks
 * the events' contract (one "sessionClosed" a session...), so the loop stops and the event socket is shut: the agent
 * sees its end instead of waiting for events that will never come.
 */
#include "relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>

int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---------- buffers ---------- */

int buf_reserve(struct buf *b, size_t extra) {
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

/* Appends n bytes; -1 (and b unchanged) when memory runs out. */
int buf_append(struct buf *b, const void *d, size_t n) {
  if (buf_reserve(b, n)) return -1;
  memcpy(b->p + b->off + b->len, d, n);
  b->len += n;
  return 0;
}

void buf_consume(struct buf *b, size_t n) {
  b->off += n;
  b->len -= n;
  if (!b->len) b->off = 0;
}

void buf_free(struct buf *b) {
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---------- a bounded JSON writer (one event line) ---------- */

/*
 * Longest event line. The largest event, "request", holds a :method of at most 64 bytes, an :authority of at
 * most 2048 (the ranges of max_method and max_authority, ahb.h) and a SPIFFE ID of at most 2048, each at most 6 bytes a byte once escaped: it fits. Past the bound a
 * string is cut (at a character, never inside an escape) and a field that does not fit whole is left out, so a line is
 * always valid JSON. The agent accepts lines of up to 256 KiB (MAX_EVENT_LINE in native-lib.ts). A buffer size, not a
 * protocol setting.
 */
#define EVENT_LINE_MAX (32 * 1024)

struct json_line {
  char p[EVENT_LINE_MAX];
  size_t len;
};

/* Room kept for the end of the line ("}\n"), which json_emit always writes. */
#define JSON_TAIL 2

/* Appends n bytes if they fit with `keep` bytes left besides the tail; 0 or -1 (nothing written). */
static int json_put(struct json_line *j, const char *d, size_t n, size_t keep) {
  if (j->len + n + keep + JSON_TAIL > sizeof j->p) return -1;
  memcpy(j->p + j->len, d, n);
  j->len += n;
  return 0;
}

static void json_begin(struct json_line *j, const char *ev) {
  j->len = 0;
  json_put(j, "{\"ev\":\"", 7, 0);
  json_put(j, ev, strlen(ev), 0); /* event names are literals of this file: nothing to escape */
  json_put(j, "\"", 1, 0);
}

/* ,"key":v — keys are literals of this file (nothing to escape); 0, or -1 when it did not fit (left out). */
static int json_num(struct json_line *j, const char *key, int64_t v) {
  char tmp[96];
  int n = snprintf(tmp, sizeof tmp, ",\"%s\":%lld", key, (long long)v);
  return n > 0 && (size_t)n < sizeof tmp ? json_put(j, tmp, (size_t)n, 0) : -1;
}

/* ,"key":"v" with v escaped (", \ and control characters); v is cut where the line's bound would be passed. */
static void json_str(struct json_line *j, const char *key, const char *v) {
  char tmp[80];
  int n = snprintf(tmp, sizeof tmp, ",\"%s\":\"", key);
  if (n <= 0 || (size_t)n >= sizeof tmp || json_put(j, tmp, (size_t)n, 1)) return;
  for (const char *s = v; s && *s; s++) {
    unsigned char c = (unsigned char)*s;
    char esc[8];
    size_t len;
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      len = 2;
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      len = 6;
    } else {
      esc[0] = (char)c;
      len = 1;
    }
    if (json_put(j, esc, len, 1)) break; /* keeps room for the closing quote */
  }
  j->p[j->len++] = '"';
}

/*
 * Ends the line and queues it on the event socket's buffer (sent by ev_flush); 0, or -1 when it was dropped. A line
 * handing the agent an fd (fd >= 0) is also noted in relay.fd_lines until the whole line has been sent: one the agent
 * never received whole is the library's to close when it stops (close_unsent_fds).
 */
static int json_emit_fd(struct json_line *j, int fd) {
  j->p[j->len++] = '}';
  j->p[j->len++] = '\n';
  if (relay.events_lost) return -1;
  struct fd_lines *m = &relay.fd_lines;
  if (fd >= 0 && m->len == m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    struct fd_line *p = realloc(m->p, cap * sizeof *p);
    if (!p) return -1; /* nothing queued: the caller keeps the fd */
    m->p = p;
    m->cap = cap;
  }
  if (buf_append(&relay.events, j->p, j->len)) {
    relay.events_lost = 1;
    relay.stop = 1;
    return -1;
  }
  relay.events_queued += j->len;
  if (fd >= 0) m->p[m->len++] = (struct fd_line){relay.events_queued, fd};
  return 0;
}

static int json_emit(struct json_line *j) { return json_emit_fd(j, -1); }

/* The noted fd lines the agent has now received whole (sent up to relay.events_sent) are forgotten. */
static void fd_lines_sent(void) {
  struct fd_lines *m = &relay.fd_lines;
  size_t done = 0;
  while (done < m->len && m->p[done].end <= relay.events_sent) done++;
  if (!done) return;
  memmove(m->p, m->p + done, (m->len - done) * sizeof *m->p);
  m->len -= done;
}

void close_unsent_fds(void) {
  struct fd_lines *m = &relay.fd_lines;
  for (size_t i = 0; i < m->len; i++) close_with_reset(m->p[i].fd);
  free(m->p);
  memset(m, 0, sizeof *m);
}

/* ---------- the event socket ---------- */

void ev_update(void) { io_set(&relay.ev_io, relay.events.len ? (EPOLLIN | EPOLLOUT) : EPOLLIN); }

void ev_flush(void) {
  while (relay.events.len) {
    ssize_t n = send(relay.evfd, relay.events.p + relay.events.off, relay.events.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      buf_consume(&relay.events, (size_t)n);
      relay.events_sent += (uint64_t)n;
      fd_lines_sent();
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break; /* EAGAIN: wait for EPOLLOUT; other errors: the agent is gone, the stop command follows */
  }
  ev_update();
}

/* ---------- the events (their fields are NativeEvent in agent/src/hbone/native-lib.ts) ---------- */

void ev_up(const struct session *s) {
  struct json_line j;
  json_begin(&j, "up");
  json_num(&j, "session", (int64_t)s->id);
  json_str(&j, "peer", s->peer);
  json_num(&j, "peerNotAfter", s->peer_not_after);
  json_str(&j, "peerSerial", s->peer_serial);
  json_emit(&j);
}

/* An event of one session with one number: {"ev":ev,"session":session,key:v}. */
static void ev_session_number(const char *ev, uint64_t session, const char *key, int64_t v) {
  struct json_line j;
  json_begin(&j, ev);
  json_num(&j, "session", (int64_t)session);
  json_num(&j, key, v);
  json_emit(&j);
}

void ev_settings(uint64_t session, int64_t max_streams) { ev_session_number("settings", session, "maxStreams", max_streams); }

void ev_goaway(uint64_t session, uint32_t code) { ev_session_number("goaway", session, "code", code); }

void ev_request(const struct session *s, const struct stream *st) {
  struct json_line j;
  json_begin(&j, "request");
  json_num(&j, "session", (int64_t)s->id);
  json_num(&j, "stream", (int64_t)st->id);
  json_str(&j, "method", st->as_server.method ? st->as_server.method : "");
  json_str(&j, "authority", st->as_server.authority ? st->as_server.authority : "");
  json_str(&j, "peer", s->peer);
  json_emit(&j);
}

/*
 * A client stream's answer: its status, or -1 and why no answer will come (why: NULL for none). retry_fd >= 0: the
 * stream was refused before any of its app's bytes were read, and the app socket is handed back to the agent with it:
 * the agent owns it only if this returns 0 (the event was queued, "retryFd" in it); on -1 the caller still owns it.
 * "retryFd" is written first, so the bounded writer can never leave it out of a queued line.
 */
int ev_status(uint64_t stream, int status, const char *why, int retry_fd) {
  struct json_line j;
  json_begin(&j, "status");
  int handed = retry_fd >= 0 && json_num(&j, "retryFd", retry_fd) == 0;
  json_num(&j, "stream", (int64_t)stream);
  json_num(&j, "status", status);
  if (why) json_str(&j, "error", why);
  if (json_emit_fd(&j, handed ? retry_fd : -1)) return -1;
  return retry_fd >= 0 && !handed ? -1 : 0;
}

void ev_closed(uint64_t stream, uint64_t bytes_in, uint64_t bytes_out, uint32_t h2_error, int errored, int connect_failed, const char *why) {
  struct json_line j;
  json_begin(&j, "closed");
  json_num(&j, "stream", (int64_t)stream);
  json_num(&j, "bytesIn", (int64_t)bytes_in);
  json_num(&j, "bytesOut", (int64_t)bytes_out);
  json_num(&j, "h2Error", h2_error);
  json_num(&j, "errored", errored);
  if (connect_failed) json_num(&j, "connectFailed", 1);
  if (why) json_str(&j, "error", why);
  json_emit(&j);
}

void ev_session_closed(const struct session *s) {
  struct json_line j;
  json_begin(&j, "sessionClosed");
  json_num(&j, "session", (int64_t)s->id);
  json_num(&j, "wasUp", s->server ? s->ready : s->up);
  json_num(&j, "identityRefused", s->identity_refused);
  json_num(&j, "timedOut", s->timed_out);
  json_num(&j, "goawayCode", s->goaway_code);
  json_str(&j, "error", s->error);
  json_emit(&j);
}

/* The "sessionClosed" of a session that could not even be made (no session object). */
void ev_session_failed(uint64_t session, const char *why) {
  struct json_line j;
  json_begin(&j, "sessionClosed");
  json_num(&j, "session", (int64_t)session);
  json_num(&j, "wasUp", 0);
  json_str(&j, "error", why);
  json_emit(&j);
}

/*
 * A connection a listener accepted: the agent owns `fd` only if this returns 0 (the line was queued with "fd" in it,
 * written first so the bounded writer can never leave it out); on -1 the caller still owns it.
 */
int ev_accepted(uint64_t listener, int fd, const char *src, int src_port, const char *dst, int dst_port) {
  struct json_line j;
  json_begin(&j, "accepted");
  if (json_num(&j, "fd", fd)) return -1;
  json_num(&j, "listener", (int64_t)listener);
  json_str(&j, "src", src);
  json_num(&j, "srcPort", src_port);
  json_str(&j, "dst", dst);
  json_num(&j, "dstPort", dst_port);
  return json_emit_fd(&j, fd);
}

/* A listener could not accept (it rests and tries again), or (gone) could not be made: there is no such listener. */
void ev_listener_error(uint64_t listener, const char *why, int gone) {
  struct json_line j;
  json_begin(&j, "listenerError");
  json_num(&j, "listener", (int64_t)listener);
  if (gone) json_num(&j, "gone", 1);
  json_str(&j, "error", why);
  json_emit(&j);
}
