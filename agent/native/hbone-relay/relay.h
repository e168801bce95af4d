/*
 * Internal header of the native HBONE data plane (dist/native/libambient-hbone.so): the types, limits and the one
 * process-wide state shared by its files. The exported C API (ahb_*) is in api.c; nothing declared here is exported.
 *
 * The files, by concern (each starts with its ownership rules):
 *   ahb.h      the exported API (ahb_*), the one header for users of the library
 *   api.c      the ahb_* calls, on the agent's thread: they copy their arguments into a command and queue it
 *   loop.c     the loop thread: epoll, the commands run, timers (handshake deadline, keepalive, idle, linger), reaping
 *   tls.c      TLS contexts, the handshake, the peer's identity (SPIFFE)
 *   session.c  HTTP/2 sessions: nghttp2 callbacks, reading and writing frames through TLS
 *   stream.c   streams: the app socket side of a CONNECT, DATA without copies
 *   listen.c   outbound listeners (a pod's 15001): accepting app connections and reporting them, under credits
 *   events.c   byte buffers, and the events to the agent (JSON lines, written by one bounded JSON writer)
 *
 * Threads: everything runs on the loop thread except api.c's functions (the agent's thread, through koffi). The two
 * meet only through `relay` fields marked "mu" (under relay.mu) or atomic, and the eventfd that wakes the loop.
 * Ownership: an fd handed to an ahb_* call belongs to the library from then on: to the command until the loop runs it,
 * then to its session, stream or listener, and is closed on every path but two: a client stream's app fd handed back in
 * its "status" event ("retryFd", stream_hand_back and cmd_client_stream), and a connection a listener accepted, in its
 * "accepted" event (listen.c); the agent owns either once its event is queued (if it cannot be, the library closes the fd). SSL, nghttp2 and buffers are freed when their session or stream is reaped
 * at the end of a loop turn (reap, loop.c), never inside an nghttp2 callback.
 */
#ifndef AMBIENT_HBONE_RELAY_H
#define AMBIENT_HBONE_RELAY_H

#define _GNU_SOURCE
#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "ahb.h"

/* Every symbol below is internal to the library: only api.c's ahb_* functions are exported (AHB_EXPORT). */
#pragma GCC visibility push(hidden)

#define AHB_EXPORT __attribute__((visibility("default")))

/*
 * Implementation constants, not protocol settings: buffer sizes and RFC-fixed overheads. Every protocol value (windows,
 * frame size, keepalive, header and stream limits, suites, ALPN, timeouts) comes from the agent in struct ahb_settings
 * (ahb.h; relay.cfg once started).
 */

/* Bytes read from an app socket and held per stream before it waits for the peer to take them. */
#define APP_BUF (256 * 1024)
/* Bytes kept free before the data of a stream's `in` buffer, so a DATA frame header fits in front of its payload. */
#define HEADROOM 16
/* One SSL_read's buffer, and the TLS plaintext queued before a flush stops taking more frames. */
#define TLS_READ (64 * 1024)
#define TLS_WBUF_FLUSH (128 * 1024)
/* HTTP/2's size of a header field: name + value + 32 (RFC 9113 6.5.2). */
#define HEADER_OVERHEAD 32
/* A SPIFFE ID is at most 2048 bytes (the SPIFFE standard). */
#define SPIFFE_ID_MAX 2048
/* After this many streams freed since the last trim, freed memory is handed back to the system (a burst of streams). */
#define TRIM_AFTER_STREAMS 4096
/* The most credits a listener holds (ahb_listen, ahb_listen_credit): connections reported and not yet granted back. */
#define MAX_ACCEPT_CREDITS 4096

/* The struct holding `member` at `p` (the loop gets a struct io * from epoll and needs its session or stream). */
#define container_of(p, type, member) ((type *)((char *)(p) - offsetof(type, member)))

/* ---------- types ---------- */

enum io_kind { IO_WAKE, IO_TIMER, IO_EVENTS, IO_SESSION, IO_APP, IO_CONNECT, IO_LISTEN };

/* One fd in the loop's epoll set; epoll's data.ptr points here. */
struct io {
  enum io_kind kind;
  int fd;
  uint32_t mask; /* current epoll interest, 0 = not registered */
};

/* A growable byte buffer: data at p[off .. off+len), capacity cap. Owned by whatever holds it; buf_free releases it. */
struct buf {
  char *p;
  size_t off, len, cap;
};

struct session;

/*
 * One CONNECT stream. Client and server streams share one type: the relay of bytes (the app socket, the in and out
 * buffers, flow control, closing) is the same for both; what only one role uses is in as_client or as_server.
 * Owned by its session (on s->streams or s->as_client.pending); also on relay.all_streams (under mu) for byte counters.
 * nghttp2 holds it (as stream user data and data source) from nghttp2_submit_request (client) or on_begin_headers
 * (server) until on_stream_close; `dead` is set only when nghttp2 does not hold it (never submitted, or h2_closed), and
 * only dead streams are freed (reap), except when the whole session is freed, where every stream goes just before
 * nghttp2_session_del.
 */
struct stream {
  struct io io; /* the app socket (downstream on the client side, upstream on the server side); owned */
  uint64_t id;
  int32_t h2id; /* -1 until submitted */
  struct session *s;
  struct stream *next_in_session, *next_all;
  struct buf in;  /* read from the app, waiting to go out as DATA */
  struct buf out; /* DATA received, waiting to be written to the app */
  int status;     /* response status (client) or answer (server); 0 = not yet */
  unsigned app_eof : 1, peer_eof : 1, app_shut : 1, h2_closed : 1, dead : 1, reported : 1, relaying : 1, errored : 1;
  unsigned deferred : 1;
  uint32_t h2_error;
  _Atomic uint64_t bytes_in;  /* read from the app socket */
  _Atomic uint64_t bytes_out; /* written to the app socket */
  size_t header_bytes;        /* of the header block being received, as HTTP/2 counts it */
  int64_t closed_ms;          /* when HTTP/2 closed the stream, then when its app last took bytes (0: open) */
  struct {
    /* The request to submit (freed once submitted): nva points into nvstore and authority. */
    nghttp2_nv *nva;
    size_t nvlen;
    char *nvstore, *authority;
    unsigned status_reported : 1; /* its one "status" event was sent */
  } as_client;
  struct {
    /* The request as received (only what the agent reads; other headers are counted, never kept). */
    char *method, *authority;
    /* fresh: received in the read being processed, not reported yet (session_report_requests); awaiting: the agent was
     * told of the request and has neither answered nor closed the stream; answered: ahb_answer ran for it. */
    unsigned fresh : 1, awaiting : 1, answered : 1;
    struct stream *next_fresh;
    /* ahb_answer_connect: the upstream socket while its connect is in flight (then it becomes `io`), its deadline, and
     * the connect's errno once it failed (named in the stream's "closed" event). */
    struct io connect_io;
    int64_t connect_deadline_ms;
    int connect_errno;
  } as_server;
};

/*
 * One HBONE connection: TLS over a TCP fd, HTTP/2 over TLS. Client and server sessions share one type because the
 * loop drives both the same way (handshake, read, flush, keepalive, reap) and nghttp2's callbacks are shared, with a
 * branch on `server` where the roles differ; what only one role uses is in as_client or as_server.
 * Owned by relay.sessions (loop thread); it owns its fd, SSL, nghttp2 session, buffers and streams.
 */
struct session {
  struct io io; /* the TCP connection to the peer; owned */
  uint64_t id;
  int server; /* the role: 1 = server (15008 side), 0 = client */
  SSL *ssl;
  nghttp2_session *h2;
  int handshaking, up, dead, graceful, identity_refused;
  int ready;              /* the peer's SETTINGS arrived (a server session is "up" only then) */
  int timed_out;          /* closed because the TLS + HTTP/2 handshake missed its deadline */
  int64_t deadline_ms;    /* handshake deadline (0: none) */
  int64_t last_active_ms; /* last time a stream opened or ended (idle limit of server sessions) */
  char *expected;         /* the identity rule: client: the peer SPIFFE ID we require; server: the trust domain */
  char peer[SPIFFE_ID_MAX + 1]; /* verified peer identity */
  char peer_serial[130];
  int64_t peer_not_after;
  struct buf wbuf; /* TLS plaintext waiting for SSL_write */
  struct stream *streams;
  uint32_t goaway_code; /* the error code of the GOAWAY that ends this session (nghttp2's, or ours for a failed read) */
  int64_t last_ping_ms, ping_sent_ms;
  char error[1200];
  struct session *next;
  struct {
    struct stream *pending; /* streams queued before the handshake finished (submitted when it does) */
  } as_client;
  struct {
    struct stream *fresh, **fresh_tail; /* requests received in this read, reported once it is processed */
    int awaiting;                       /* streams with as_server.awaiting set (the agent's work in progress) */
  } as_server;
};

/*
 * An outbound listener (ahb_listen): a pod's listening socket whose connections the loop accepts. Owned by
 * relay.listeners (loop thread); it owns its fd.
 */
struct listener {
  struct io io;
  uint64_t id;
  int ipv6;              /* the listening socket's family: which original-destination option applies */
  int32_t credits;       /* connections it may still report before the agent grants more (0: not accepting) */
  int64_t rest_until_ms; /* accept() failed (out of fds, ...): not accepting until then (0: not resting) */
  int dead;              /* stopped: its fd is closed, reap_listeners frees it at the end of the turn */
  struct listener *next;
};

/* An event line handing the agent an fd, noted until the agent has received it whole (events.c). */
struct fd_line {
  uint64_t end; /* the line's end, in bytes queued on the event socket since start */
  int fd;
};
struct fd_lines {
  struct fd_line *p;
  size_t len, cap;
};

/* A TLS context the agent made (ahb_ctx_new); on relay.ctxs under mu. Holds one reference to ctx. */
struct ctx_entry {
  uint64_t id;
  SSL_CTX *ctx;
  struct ctx_entry *next;
};

enum cmd_kind { CMD_CLIENT_SESSION, CMD_SERVER_SESSION, CMD_CLIENT_STREAM, CMD_ANSWER, CMD_ANSWER_CONNECT, CMD_CLOSE_STREAM, CMD_CLOSE_SESSION, CMD_LISTEN, CMD_LISTEN_CREDIT, CMD_UNLISTEN, CMD_STOP };

/* One API call for the loop. Owns fd, a, b and its ctx reference until the loop hands them on (or cmd_free). */
struct cmd {
  enum cmd_kind kind;
  uint64_t id, ref; /* the new object's id; the session (or ctx) it refers to */
  int fd, status, flag;
  char *a, *b;  /* strings the command owns */
  SSL_CTX *ctx; /* sessions: the TLS context, referenced when the call was made (a later ahb_ctx_free cannot take it) */
  struct cmd *next;
};

/*
 * The library's one state (one data plane a process). Who may touch what:
 * - start/stop: `running`, `thread`, the fds and their io are set by ahb_start and torn down by ahb_stop, on the agent's
 *   thread while no loop runs; the loop thread only reads them.
 * - mu: `cmds` (the agent's thread queues, the loop takes), `ctxs` (the agent's thread only, under mu for find_ctx) and
 *   `all_streams` (the loop links and unlinks, ahb_stream_bytes reads).
 * - loop thread only: `sessions`, `listeners`, `events`, `events_queued`, `events_sent`, `fd_lines`, `events_lost`, `stop`
 *   (ahb_stop also touches the event state once the loop has ended).
 * - atomic: `next_id` (ids are allocated on both threads).
 * - `cfg` and the strings it points to (suites, alpn): written by ahb_start before the loop thread starts, read-only
 *   while it runs (by both threads).
 * - `err`: the agent's thread only (the last error of an ahb_* call).
 */
struct relay_state {
  pthread_mutex_t mu;
  pthread_t thread;
  int running;
  int epfd, wakefd, timerfd, evfd;
  struct io wake_io, timer_io, ev_io;
  struct cmd *cmds, *cmds_tail;
  struct ctx_entry *ctxs;
  struct session *sessions;
  struct listener *listeners;
  struct stream *all_streams;
  _Atomic uint64_t next_id;
  struct buf events;
  uint64_t events_queued, events_sent; /* bytes of event lines queued and sent since start */
  struct fd_lines fd_lines;            /* lines carrying an fd not yet sent whole (closed by close_unsent_fds) */
  int events_lost; /* an event could not be queued (out of memory): the loop stops and the event socket is shut */
  int stop;
  char err[512];
  struct ahb_settings cfg; /* its strings point into suites and alpn */
  char suites[256], alpn[256];
};

extern struct relay_state relay;

/* ---------- events.c: buffers, JSON, events ---------- */

int64_t now_ms(void);
int buf_reserve(struct buf *b, size_t extra);
int buf_append(struct buf *b, const void *d, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);

void ev_flush(void);
void ev_update(void);
void close_unsent_fds(void);
void ev_up(const struct session *s);
void ev_settings(uint64_t session, int64_t max_streams);
void ev_goaway(uint64_t session, uint32_t code);
void ev_request(const struct session *s, const struct stream *st);
int ev_status(uint64_t stream, int status, const char *why, int retry_fd);
void ev_closed(uint64_t stream, uint64_t bytes_in, uint64_t bytes_out, uint32_t h2_error, int errored, int connect_failed, const char *why);
void ev_session_closed(const struct session *s);
void ev_session_failed(uint64_t session, const char *why);
int ev_accepted(uint64_t listener, int fd, const char *src, int src_port, const char *dst, int dst_port);
void ev_listener_error(uint64_t listener, const char *why, int gone);

/* ---------- loop.c: epoll, commands, timers, reaping ---------- */

void io_set(struct io *io, uint32_t mask);
void io_close(struct io *io);
void *relay_loop(void *arg);
struct cmd *take_cmds(void);
void cmd_free(struct cmd *c);

/* ---------- tls.c ---------- */

int tls_check_settings(const struct ahb_settings *cfg, char *err, size_t errn);
SSL_CTX *tls_ctx_new(int server, const char *chain, const char *key, const char *roots, char *err, size_t errn);
void tls_error_string(char *out, size_t n, const char *what);
const char *spiffe_check(const char *uri, const char *td);
int tls_session_new(struct session *s, SSL_CTX *ctx);
int tls_handshake_step(struct session *s);
int tls_check_peer(struct session *s);

/* ---------- session.c ---------- */

struct session *find_session(uint64_t id);
void session_fail(struct session *s, const char *why);
void session_pump(struct session *s);
void session_flush(struct session *s);
void session_update(struct session *s);
void session_goaway(struct session *s);
void client_submit(struct session *s, struct stream *st);

/* ---------- listen.c ---------- */

void listener_accept(struct listener *l);
void reap_listeners(void);
void listener_tick(int64_t now);
void cmd_listen(struct cmd *c);
void cmd_listen_credit(struct cmd *c);
void cmd_unlisten(struct cmd *c);
void listeners_free(void);

/* ---------- stream.c ---------- */

struct stream *stream_new(uint64_t id, struct session *s, int fd);
struct stream *find_stream_any(uint64_t id);
void stream_free(struct stream *st);
void stream_update(struct stream *st);
void stream_drop_out(struct stream *st);
void stream_abort(struct stream *st, uint32_t code);
void stream_check_done(struct stream *st);
void stream_write_out(struct stream *st);
void stream_read_app(struct stream *st);
void stream_report_status(struct stream *st, int status, const char *why);
void stream_report_unanswered(struct stream *st, const char *session_error);
int stream_hand_back(struct stream *st, const char *why);
void stream_report_closed(struct stream *st, const char *why);
void set_reset_on_close(int fd);
void close_with_reset(int fd);
void set_nonblock_nodelay(int fd, int nodelay);
ssize_t data_read_cb(nghttp2_session *h2, int32_t sid, uint8_t *out, size_t len, uint32_t *flags, nghttp2_data_source *src, void *ud);
int send_data_cb(nghttp2_session *h2, nghttp2_frame *f, const uint8_t *framehd, size_t length, nghttp2_data_source *src, void *ud);
ssize_t read_length_cb(nghttp2_session *h2, uint8_t type, int32_t sid, int32_t sw, int32_t cw, uint32_t remote_max, void *ud);

#pragma GCC visibility pop

#endif
