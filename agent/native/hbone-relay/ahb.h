/*
 * The exported C API of the native HBONE data plane (libambient-hbone.so), as agent/src/hbone/native-lib.ts binds it
 * with koffi; its contract is at the top of api.c. Included by api.c (so the definitions are checked against it).
 */
#ifndef AMBIENT_HBONE_AHB_H
#define AMBIENT_HBONE_AHB_H

#include <stdint.h>

/* The relay thread's name (at most 15 characters): how an operator tells its CPU from the agent's main thread. */
#define RELAY_THREAD_NAME "hbone-relay"

/*
 * The relay's protocol settings, all of them, from the agent (agent/src/hbone/settings.ts and tls.ts, passed by
 * native-lib.ts): ahb_start checks each against its range and copies them (strings too). Sizes in bytes, times in ms.
 */
struct ahb_settings {
  uint32_t stream_window;          /* SETTINGS_INITIAL_WINDOW_SIZE we advertise (1 .. 2^31-1) */
  uint32_t connection_window;      /* our connection-level receive window (65535 .. 2^31-1) */
  uint32_t max_frame_size;         /* SETTINGS_MAX_FRAME_SIZE we advertise (16384 .. 16777215) */
  uint32_t server_max_header_list; /* SETTINGS_MAX_HEADER_LIST_SIZE of server sessions, enforced on requests (1024 .. 16 MiB) */
  uint32_t client_max_header_list; /* the same for client sessions, enforced on responses (1024 .. 16 MiB) */
  /* SETTINGS_MAX_CONCURRENT_STREAMS of server sessions, and the most requests of one session the agent may be working
   * on at once (beyond it, REFUSED_STREAM) (1 .. 100000) */
  uint32_t server_max_streams;
  uint32_t peer_max_streams_before_settings; /* streams a client session may open before the peer's SETTINGS (1 .. 100000) */
  uint32_t max_method;             /* longest :method accepted and carried to the agent (1 .. 64) */
  uint32_t max_authority;          /* longest :authority accepted and carried to the agent (1 .. 2048) */
  int32_t keepalive_interval_ms;   /* a PING after this long without one (1000 .. 10^9; checked once a second) */
  int32_t keepalive_timeout_ms;    /* a PING unanswered this long fails the session (1000 .. 10^9) */
  int32_t handshake_timeout_ms;    /* TLS + HTTP/2 handshake deadline of new sessions (0 = none .. 10^9) */
  int32_t idle_timeout_ms;         /* a server session without streams this long is closed with GOAWAY (0 = none .. 10^9) */
  int32_t unread_linger_ms;        /* a stream closed in order may hold DATA its app does not read this long (0 = none .. 10^9) */
  const char *ciphersuites;        /* TLS 1.3 suites, OpenSSL names joined by ':' (checked with OpenSSL) */
  const char *alpn;                /* the one ALPN protocol offered and accepted (1 .. 255 bytes; HTTP/2 over TLS: "h2") */
};

const char *ahb_last_error(void);
int ahb_start(const struct ahb_settings *settings);
const char *ahb_spiffe_check(const char *uri, const char *td);
void ahb_stop(void);
uint64_t ahb_ctx_new(int server, const char *chain_pem, const char *key_pem, const char *roots_pem);
void ahb_ctx_free(uint64_t id);
uint64_t ahb_client_session(uint64_t ctx, int fd, const char *expected_id);
uint64_t ahb_server_session(uint64_t ctx, int fd, const char *trust_domain);
uint64_t ahb_client_stream(uint64_t session, int fd, const char *authority, const char *headers);
void ahb_answer(uint64_t stream, int status, int fd);
void ahb_answer_connect(uint64_t stream, int fd, int timeout_ms);
void ahb_close_stream(uint64_t stream);
void ahb_close_session(uint64_t session, int graceful);
int ahb_stream_bytes(uint64_t stream, uint64_t *out);
uint64_t ahb_listen(int fd, int ipv6, int credits);
int ahb_listen_credit(uint64_t listener, int n);
void ahb_unlisten(uint64_t listener);

#endif
