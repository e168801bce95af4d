/*
 * The exported C API of the native HBONE data plane (libambient-hbone.so), as agent/src/hbone/native-lib.ts binds it
 * with koffi; its contract is at the top of api.c. Included by api.c (so the definitions are checked against it).
 */
#ifndef AMBIENT_HBONE_AHB_H
#define AMBIENT_HBONE_AHB_H

#include <stdint.h>

const char *ahb_last_error(void);
int ahb_start(void);
void ahb_set_limits(int handshake_ms, int idle_ms, int linger_ms);
const char *ahb_spiffe_check(const char *uri, const char *td);
void ahb_stop(void);
uint64_t ahb_ctx_new(int server, const char *chain_pem, const char *key_pem, const char *roots_pem);
void ahb_ctx_free(uint64_t id);
uint64_t ahb_client_session(uint64_t ctx, int fd, const char *expected_id);
uint64_t ahb_server_session(uint64_t ctx, int fd, const char *trust_domain);
uint64_t ahb_client_stream(uint64_t session, int fd, const char *authority, const char *headers);
void ahb_answer(uint64_t stream, int status, int fd);
void ahb_close_stream(uint64_t stream);
void ahb_close_session(uint64_t session, int graceful);
int ahb_stream_bytes(uint64_t stream, uint64_t *out);

#endif
