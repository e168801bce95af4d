/*
 * ambient-cni fast path: a small native front for the TypeScript plugin. It hands the invocation (CNI_* env + stdin)
 * to the agent, which runs the same plugin code in-process (POST /v1/cni/exec), and relays stdout, stderr and the
 * exit code. Node's ~60 ms start-up is paid only on the fallback: whenever the agent cannot be reached or answers
 * anything but a complete 200, the shim execs the plugin beside it: the standalone executable ambient-cni-standalone
 * (no Node needed on the host) when present, else the Node bundle ambient-cni.mjs; that one then reports the
 * proper CNI result or error itself (fail closed: ADD -> code 11, DEL -> success). The shim never writes a CNI
 * result of its own, so the CNI semantics live in one place. The constants it shares with the plugin (default socket,
 * stdin limit, CNI variables, timeout bounds, the internal-error code) come from ambient-cni-constants.h, which
 * scripts/build.sh generates from cni/src/shim-constants.ts.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ambient-cni-constants.h"

/* The shim's own: the largest agent reply it reads, and the grace it adds to agent_timeout_ms for the round trip. */
#define MAX_REPLY (8 << 20)
#define TIMEOUT_GRACE_MS 1000L

static const char *CNI_VARS[] = CNI_VARS_INIT;

struct buf {
  char *p;
  size_t len, cap;
};

static int put(struct buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (b->len + n + 1 > cap) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = 0;
  return 0;
}

static int puts_(struct buf *b, const char *s) { return put(b, s, strlen(s)); }

/* Appends s as a JSON string literal. */
static int put_json_string(struct buf *b, const char *s, size_t n) {
  if (puts_(b, "\"")) return -1;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      if (put(b, esc, 2)) return -1;
    } else if (c < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", c);
      if (puts_(b, esc)) return -1;
    } else if (put(b, (const char *)&s[i], 1)) {
      return -1;
    }
  }
  return puts_(b, "\"");
}

/* Value of a top-level-looking "key": "string" in the config; NULL when absent or not a plain string. */
static char *json_string_value(const char *conf, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *k = strstr(conf, pat);
  if (!k) return NULL;
  const char *p = k + strlen(pat);
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p++ != ':') return NULL;
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p++ != '"') return NULL;
  const char *end = strchr(p, '"');
  if (!end || memchr(p, '\\', (size_t)(end - p))) return NULL; /* escapes: let the Node plugin handle it */
  return strndup(p, (size_t)(end - p));
}

static long json_number_value(const char *conf, const char *key, long dflt) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\"", key);
  const char *k = strstr(conf, pat);
  if (!k) return dflt;
  const char *p = k + strlen(pat);
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
  if (*p++ != ':') return dflt;
  char *end;
  long v = strtol(p, &end, 10);
  return (end == p || v <= 0 || v > MAX_TIMEOUT_MS) ? dflt : v;
}

static long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* Replaces this process with the plugin beside the shim (standalone executable first, else the Node bundle), with the
 * same env and the stdin already read. */
static void fallback(const char *in, size_t in_len, char **argv) {
  char self[PATH_MAX], target[PATH_MAX + 32];
  ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0) goto fail;
  self[n] = 0;
  char *slash = strrchr(self, '/');
  if (!slash) goto fail;
  *slash = 0;
  snprintf(target, sizeof target, "%s/ambient-cni-standalone", self);
  if (access(target, X_OK) != 0) snprintf(target, sizeof target, "%s/ambient-cni.mjs", self);
  int fd = memfd_create("ambient-cni-stdin", 0);
  if (fd < 0) goto fail;
  for (size_t off = 0; off < in_len;) {
    ssize_t w = write(fd, in + off, in_len - off);
    if (w <= 0) goto fail;
    off += (size_t)w;
  }
  if (lseek(fd, 0, SEEK_SET) < 0 || dup2(fd, 0) < 0) goto fail;
  close(fd);
  argv[0] = target;
  execv(target, argv);
fail:
  fprintf(stderr, "{\"level\":50,\"component\":\"ambient-cni\",\"msg\":\"cannot start the plugin fallback beside the shim: %s\"}\n", strerror(errno));
  printf("{\"code\":%d,\"msg\":\"ambient-cni: cannot reach the agent and cannot start the plugin beside the shim\"}\n", CNI_CODE_INTERNAL);
  exit(1);
}

int main(int argc, char **argv) {
  (void)argc;
  struct buf in = {0};
  char chunk[65536];
  for (;;) {
    ssize_t r = read(0, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    if (put(&in, chunk, (size_t)r)) fallback(in.p, in.len, argv);
    if (in.len > MAX_STDIN) break; /* the Node plugin rejects oversized input with a proper error */
  }
  if (!in.p && put(&in, "", 0)) return 1;
  if (in.len > MAX_STDIN || getenv("AMBIENT_CNI_NO_FAST_PATH")) fallback(in.p, in.len, argv);

  char *socket_path = json_string_value(in.p, "agent_socket");
  long timeout_ms = json_number_value(in.p, "agent_timeout_ms", DEFAULT_TIMEOUT_MS) + TIMEOUT_GRACE_MS;
  const char *path = socket_path ? socket_path : DEFAULT_SOCKET;

  struct buf body = {0};
  puts_(&body, "{\"env\":{");
  int first = 1;
  for (size_t i = 0; i < sizeof CNI_VARS / sizeof *CNI_VARS; i++) {
    const char *v = getenv(CNI_VARS[i]);
    if (!v) continue;
    if (!first) puts_(&body, ",");
    first = 0;
    put_json_string(&body, CNI_VARS[i], strlen(CNI_VARS[i]));
    puts_(&body, ":");
    put_json_string(&body, v, strlen(v));
  }
  puts_(&body, "},\"stdin\":");
  if (put_json_string(&body, in.p, in.len) || puts_(&body, "}")) fallback(in.p, in.len, argv);

  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) fallback(in.p, in.len, argv);
  strcpy(addr.sun_path, path);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) < 0) fallback(in.p, in.len, argv);

  struct buf req = {0};
  char head[256];
  snprintf(head, sizeof head,
           "POST /v1/cni/exec HTTP/1.1\r\nHost: ambient-node\r\nContent-Type: application/json\r\n"
           "Content-Length: %zu\r\nConnection: close\r\n\r\n",
           body.len);
  if (puts_(&req, head) || put(&req, body.p, body.len)) fallback(in.p, in.len, argv);
  for (size_t off = 0; off < req.len;) {
    ssize_t w = send(s, req.p + off, req.len - off, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) fallback(in.p, in.len, argv);
    off += (size_t)w;
  }

  struct buf reply = {0};
  long deadline = now_ms() + timeout_ms;
  for (;;) {
    long left = deadline - now_ms();
    if (left <= 0) fallback(in.p, in.len, argv);
    struct pollfd pfd = {.fd = s, .events = POLLIN};
    int pr = poll(&pfd, 1, (int)left);
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) fallback(in.p, in.len, argv);
    ssize_t r = read(s, chunk, sizeof chunk);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fallback(in.p, in.len, argv);
    if (r == 0) break;
    if (put(&reply, chunk, (size_t)r) || reply.len > MAX_REPLY) fallback(in.p, in.len, argv);
  }
  close(s);

  /* HTTP/1.1 200 ... \r\n\r\n<exit code>\n<stdout length>\n<stdout><stderr> */
  if (!reply.p || strncmp(reply.p, "HTTP/1.1 200 ", 13) != 0) fallback(in.p, in.len, argv);
  char *payload = strstr(reply.p, "\r\n\r\n");
  if (!payload) fallback(in.p, in.len, argv);
  payload += 4;
  char *end;
  long code = strtol(payload, &end, 10);
  if (*end != '\n' || code < 0 || code > 255) fallback(in.p, in.len, argv);
  long out_len = strtol(end + 1, &end, 10);
  size_t avail = reply.len - (size_t)(end - reply.p);
  if (*end != '\n' || out_len < 0 || (size_t)out_len > avail - 1) fallback(in.p, in.len, argv);
  end++;
  size_t err_len = avail - 1 - (size_t)out_len;
  if (fwrite(end, 1, (size_t)out_len, stdout) != (size_t)out_len) return 1;
  fflush(stdout);
  if (err_len) (void)!write(2, end + out_len, err_len);
  return (int)code;
}
