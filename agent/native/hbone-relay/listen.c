/*
 * Outbound listeners (a pod's 15001): the loop accepts the app's connections itself and reports each one ("accepted":
 * the fd, the client's address and the original destination) instead of Node making a socket object per connection.
 * Ownership: loop thread (relay.listeners). A listener owns its listening fd; an accepted fd is the agent's once its
 * "accepted" event is queued (if it cannot be, it is reset and closed here). A stopped listener is marked dead (its fd
 * closed at once) and freed by reap at the end of the loop turn, as an epoll event of this turn may still point to it. Flow control: a listener reports at most
 * `credits` connections the agent has not granted back (ahb_listen_credit); at zero it stops accepting, so a pod's
 * connect flood waits in its own accept queue (bounded by the backlog) instead of filling the agent's event queue.
 */
#include "relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter_ipv4.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

/* IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h, which does not build alone in user space). */
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

/* Connections accepted per readiness report of one listener before the loop serves other fds (fairness). */
#define ACCEPT_BATCH 32
/* How long a listener rests after accept() failed (out of fds or memory, a socket no longer listening) or its event
 * could not be queued. */
#define ACCEPT_REST_MS 1000

static struct listener *find_listener(uint64_t id) {
  for (struct listener *l = relay.listeners; l; l = l->next)
    if (l->id == id && !l->dead) return l;
  return NULL;
}

/* Readable interest only while the listener has credits and is not resting. */
static void listener_update(struct listener *l) { io_set(&l->io, l->credits > 0 && !l->rest_until_ms ? EPOLLIN : 0); }

/* Stops a listener: its fd closed now, its memory at the end of the turn (reap_listeners). */
static void listener_stop(struct listener *l) {
  io_close(&l->io);
  l->dead = 1;
}

/* Rests a listener for ACCEPT_REST_MS after accept() failed with `err`, and says why (at most once per rest). */
static void listener_rest(struct listener *l, int err) {
  char why[160];
  snprintf(why, sizeof why, "accept: %s; accepting again in %d ms", strerror(err), ACCEPT_REST_MS);
  ev_listener_error(l->id, why, 0);
  l->rest_until_ms = now_ms() + ACCEPT_REST_MS;
}

/*
 * The connection's original destination: the conntrack entry's under REDIRECT (SO_ORIGINAL_DST, IPv6's by the
 * listener's family), else the socket's local address (TPROXY or sk_assign steering keeps it). 0, or -1.
 */
static int original_dst(int fd, int ipv6, struct sockaddr_storage *dst) {
  socklen_t len = sizeof *dst;
  if (ipv6 ? getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, &len) == 0 : getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, dst, &len) == 0) return 0;
  len = sizeof *dst;
  return getsockname(fd, (struct sockaddr *)dst, &len);
}

/* An address as text and its port; 0, or -1 for a family other than IPv4 and IPv6. */
static int address_text(const struct sockaddr_storage *a, char *text, size_t n, int *port) {
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *in = (const struct sockaddr_in *)a;
    *port = ntohs(in->sin_port);
    return inet_ntop(AF_INET, &in->sin_addr, text, (socklen_t)n) ? 0 : -1;
  }
  if (a->ss_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)a;
    *port = ntohs(in6->sin6_port);
    return inet_ntop(AF_INET6, &in6->sin6_addr, text, (socklen_t)n) ? 0 : -1;
  }
  return -1;
}

/*
 * Reports one accepted connection; the agent owns fd once this returns 0, else it was refused here. One without an
 * original destination is still reported, with an empty "dst": the agent refuses it and logs why.
 */
static int report_accepted(struct listener *l, int fd, const struct sockaddr_storage *peer) {
  struct sockaddr_storage dst;
  char src_text[INET6_ADDRSTRLEN] = "", dst_text[INET6_ADDRSTRLEN] = "";
  int src_port = 0, dst_port = 0;
  if (original_dst(fd, l->ipv6, &dst) || address_text(&dst, dst_text, sizeof dst_text, &dst_port)) {
    dst_text[0] = 0;
    dst_port = 0;
  }
  if (address_text(peer, src_text, sizeof src_text, &src_port)) src_text[0] = 0;
  if (ev_accepted(l->id, fd, src_text, src_port, dst_text, dst_port)) {
    close_with_reset(fd); /* a connection the agent will never see */
    return -1;
  }
  return 0;
}

void listener_accept(struct listener *l) {
  if (l->dead) return; /* stopped earlier in this turn */
  /* Not once the loop is stopping: a connection left in the queue is the agent's copy's, or a successor's, to take. */
  for (int i = 0; i < ACCEPT_BATCH && l->credits > 0 && !relay.events_lost && !relay.stop; i++) {
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(l->io.fd, (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO || errno == EPERM) continue;
      /* Anything but an empty queue (out of fds or memory, or a socket no longer listening, e.g. shut down by the other
       * agent holding it): level-triggered readiness would spin, so rest and try again from the timer. */
      if (errno != EAGAIN) listener_rest(l, errno);
      break;
    }
    if (report_accepted(l, fd, &peer) == 0) {
      l->credits--;
    } else if (!relay.events_lost) {
      listener_rest(l, ENOMEM); /* its event could not be queued: rest rather than reset connection after connection */
      break;
    }
  }
  listener_update(l);
}

void listener_tick(int64_t now) {
  for (struct listener *l = relay.listeners; l; l = l->next) {
    if (!l->dead && l->rest_until_ms && now >= l->rest_until_ms) {
      l->rest_until_ms = 0;
      listener_update(l);
    }
  }
}

/* Why `fd` cannot serve as a listener of the family (ipv6), or NULL: a listening TCP socket of that family. */
static const char *not_a_listener(int fd, int ipv6) {
  int v = 0;
  socklen_t len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) || !v) return "the socket is not listening";
  len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &len) || v != SOCK_STREAM) return "the socket is not a stream socket";
  len = sizeof v;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &v, &len) || v != (ipv6 ? AF_INET6 : AF_INET)) return "the socket is not of the listener's family";
  return NULL;
}

void cmd_listen(struct cmd *c) {
  const char *bad = not_a_listener(c->fd, c->flag);
  if (bad) {
    ev_listener_error(c->id, bad, 1);
    return; /* cmd_free closes the fd */
  }
  struct listener *l = calloc(1, sizeof *l);
  if (!l) {
    ev_listener_error(c->id, "out of memory", 1);
    return;
  }
  set_nonblock_nodelay(c->fd, 0); /* accept() must never block the loop, whoever made the socket */
  l->io = (struct io){IO_LISTEN, c->fd, 0};
  c->fd = -1;
  l->id = c->id;
  l->ipv6 = c->flag;
  l->credits = c->status;
  l->next = relay.listeners;
  relay.listeners = l;
  listener_update(l);
}

void cmd_listen_credit(struct cmd *c) {
  struct listener *l = find_listener(c->id);
  if (!l) return;
  int64_t credits = (int64_t)l->credits + c->status;
  l->credits = credits > MAX_ACCEPT_CREDITS ? MAX_ACCEPT_CREDITS : (int32_t)credits;
  listener_update(l);
}

void cmd_unlisten(struct cmd *c) {
  struct listener *l = find_listener(c->id);
  if (l) listener_stop(l);
}

void reap_listeners(void) {
  for (struct listener **pp = &relay.listeners; *pp;) {
    struct listener *l = *pp;
    if (!l->dead) {
      pp = &l->next;
      continue;
    }
    *pp = l->next;
    free(l);
  }
}

void listeners_free(void) {
  for (struct listener *l = relay.listeners; l; l = l->next) listener_stop(l);
  reap_listeners();
}
