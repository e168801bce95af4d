// SPDX-License-Identifier: GPL-2.0
// In-pod redirection for the ebpf backend: tc clsact programs on the pod's own interface (design A).
// Owns the packet decisions only; the agent's loader (agent/src/platform/libbpf.ts) attaches them and fills ambient_cfg.
//
// Egress (ambient_out): a new outbound TCP SYN (or a later packet of a flow the agent owns) is marked 0x1000 and
// re-injected at the pod's own ingress, because bpf_sk_assign only works at tc ingress.
// Ingress (ambient_in): re-injected outbound SYNs are assigned to the 127.0.0.1:15001 listener, inbound SYNs to the pod
// IP (except 15008/15006 and kubelet probes) to the podIP:15006 listener. No listener => drop: fail closed.
// IP fragments of TCP are dropped both ways (fail closed): a socket assigned to the first fragment does not survive
// reassembly (the stack orphans the skb), so the reassembled SYN would reach the app's own listener inbound, and a first
// fragment too short to hold the TCP header would carry an outbound SYN past the capture. TCP is not fragmented on a
// pod network (PMTU discovery, DF); fragments of other protocols (large UDP) are left alone.
// A socket whose SYN was captured is tagged (socket storage): its later packets are always re-injected, even when the
// agent's socket for the flow is gone (agent killed, connection reset), so the stack resets them inside the pod; without
// the tag, segments an app sent before taking the reset in left the pod in clear.
// Inbound source preservation: the agent's upstream socket to the app is bound (IP_TRANSPARENT) to the client's address
// and carries mark 0x1000; with tcp_fwmark_accept the app's socket takes that mark from the SYN, so the re-injection
// rule routes the app's replies through lo to the agent (and the app advertises lo's MSS). A packet carrying 0x1000
// seen here at egress (the rule gone) is re-injected, never sent. Without tcp_fwmark_accept the app's replies leave
// through eth0 egress toward the client, where the flow lookup finds the agent's socket: they are re-injected like
// outbound flows (mark 0x1000, local table) and reach that socket; the app's socket is tagged then too, so its later
// packets never leave the pod in clear toward the client.
// IPv6 is captured the same way when the loader says so (CFG_CAPTURE_IPV6: --capture-ipv6 and a pod IPv6 address), to
// [::1]:15001 and [pod IPv6]:15006, for TCP directly after the fixed IPv6 header only: TCP behind extension headers
// (fragments included) is refused (fail closed), and so is an IPv6 SYN from or to another address of the pod (its
// link-local one): only the pod's captured address is carried. Otherwise IPv6 TCP is not captured, so it is refused
// both ways (never bypasses the mesh): a connection-opening SYN is turned into the RST a closed port would send and
// handed back to its sender (the app or the peer is refused at once, as with ip6tables' redirect to a port nobody
// listens on), anything else is dropped. The rest of IPv6 (ICMPv6 neighbour discovery, UDP) passes, and so do kubelet
// probes (from the node's IPv6 probe SNAT address) and the app's answers to them.
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define AGENT_MARK 0x539
#define AGENT_MARK_MASK 0xfff
#define OUTBOUND_MARK 0x1000
#define IPV6_RESET_MARK 0x2000 /* a RST made here for a refused IPv6 SYN, on its way back to the sender */
#define OUTBOUND_PORT 15001
#define INBOUND_PLAINTEXT_PORT 15006
#define INBOUND_HBONE_PORT 15008
#define PROBE_SNAT_IP 0xa9fe077f /* 169.254.7.127, host order */
/* fd16:9254:7127:1337:ffff:ffff:ffff:ffff (the IPv6 probe SNAT address), its four 32-bit words in host order */
#define PROBE_SNAT_IP6_0 0xfd169254
#define PROBE_SNAT_IP6_1 0x71271337
#define PROBE_SNAT_IP6_2 0xffffffff
#define PROBE_SNAT_IP6_3 0xffffffff
#define LOOPBACK_NET 0x7f000000 /* 127.0.0.0/8, host order */
#define PACKET_HOST 0
#define TCP_LISTEN 10
#define TCP_NEW_SYN_RECV 12
#define TCP_TIME_WAIT 6
#define IP_MF_OFFSET 0x3fff /* more-fragments flag | fragment offset, host order */

/* Per-pod configuration, written by the loader before the programs are attached. Layout mirrored in ebpf-config.ts. */
struct ambient_cfg {
	__u32 version;    /* layout version, 1 */
	__u32 ifindex;    /* the pod interface the programs sit on */
	__be32 pod_ip4;   /* network order; 0 = no IPv4 address */
	__u32 flags;      /* CFG_* */
	__be32 pod_ip6[4]; /* network order; read only with CFG_CAPTURE_IPV6 */
};

#define CFG_CAPTURE_IPV6 0x1 /* capture the pod's IPv6 TCP at pod_ip6 (else IPv6 TCP is refused) */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ambient_cfg);
} ambient_cfg SEC(".maps");

/* Per-CPU verdict counters, read by the agent for `ambient-node rules` and by the tests. Indexes mirrored in ebpf-config.ts. */
enum {
	STAT_OUT_REDIRECTED,  /* outbound SYNs re-injected at ingress */
	STAT_OUT_ASSIGNED,    /* outbound SYNs assigned to 127.0.0.1:15001 */
	STAT_IN_ASSIGNED,     /* inbound SYNs assigned to podIP:15006 */
	STAT_DROP_NO_LISTENER, /* SYNs dropped because the agent's listener is not there (fail closed) */
	STAT_DROP_SPOOFED,    /* inbound packets claiming the pod's own source address */
	STAT_DROP_FRAGMENT,   /* IP fragments of TCP, either direction (a fragmented SYN could bypass the assignment) */
	STAT_DROP_IPV6,       /* IPv6 TCP refused, either direction (uncaptured, extension headers, another pod address) */
	STAT_OUT_ORPHANED,    /* later packets of captured flows whose agent socket was gone: reset inside the pod, not sent */
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} ambient_stats SEC(".maps");

/* Sockets of the pod whose connection-opening SYN was captured (value 1). Lives and dies with each socket: no bound to
 * size, nothing to evict, and a connection opened before enrolment has no entry. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} ambient_captured SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *v = bpf_map_lookup_elem(&ambient_stats, &stat);
	if (v)
		*v += 1;
}

/* The parts of a TCP packet (IPv4, or IPv6 when captured) the decisions need. */
struct flow {
	struct bpf_sock_tuple tuple; /* as seen by the receiving socket: saddr = sender (the only part set for other IP) */
	__u8 syn;                    /* a connection-opening SYN (SYN without ACK) */
	__u8 v6;                     /* tuple.ipv6, else tuple.ipv4 */
};

static __always_inline const struct ambient_cfg *config(void)
{
	__u32 key = 0;
	return bpf_map_lookup_elem(&ambient_cfg, &key);
}

static __always_inline int capture6(const struct ambient_cfg *cfg)
{
	return cfg && (cfg->flags & CFG_CAPTURE_IPV6) && (cfg->pod_ip6[0] | cfg->pod_ip6[1] | cfg->pod_ip6[2] | cfg->pod_ip6[3]);
}

enum {
	PARSE_MALFORMED = -1,
	PARSE_OTHER = 0,    /* not TCP of a captured family: left alone (f->tuple's saddr set for IP) */
	PARSE_TCP = 1,      /* TCP, parsed into f */
	PARSE_TCP_FRAG = 2, /* an IPv4 fragment (first or later) of TCP: dropped by both programs */
	PARSE_TCP_EXT = 3,  /* IPv6 TCP behind extension headers (fragments too): refused by both programs */
};

/* One of PARSE_*. A fragment is never parsed: the first may hold only part of the TCP header, later ones none. */
static __always_inline int parse4(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	f->tuple.ipv4.saddr = ip->saddr;
	if (ip->protocol != IPPROTO_TCP)
		return PARSE_OTHER;
	if (ip->frag_off & bpf_htons(IP_MF_OFFSET))
		return PARSE_TCP_FRAG;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return PARSE_MALFORMED;
	struct tcphdr tcp;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + ihl, &tcp, sizeof(tcp)) < 0)
		return PARSE_MALFORMED;
	f->tuple.ipv4.daddr = ip->daddr;
	f->tuple.ipv4.sport = tcp.source;
	f->tuple.ipv4.dport = tcp.dest;
	f->syn = tcp.syn && !tcp.ack;
	return PARSE_TCP;
}

static __always_inline int ipv6_tcp(struct __sk_buff *skb);

/* One of PARSE_*, for IPv6 (captured): TCP is parsed only right after the fixed header. */
static __always_inline int parse6(struct __sk_buff *skb, struct flow *f)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	f->v6 = 1;
	__builtin_memcpy(f->tuple.ipv6.saddr, &ip6->saddr, 16);
	if (ip6->nexthdr != IPPROTO_TCP)
		return ipv6_tcp(skb) ? PARSE_TCP_EXT : PARSE_OTHER;
	struct tcphdr tcp;
	if (bpf_skb_load_bytes(skb, sizeof(struct ethhdr) + sizeof(*ip6), &tcp, sizeof(tcp)) < 0)
		return PARSE_MALFORMED;
	__builtin_memcpy(f->tuple.ipv6.daddr, &ip6->daddr, 16);
	f->tuple.ipv6.sport = tcp.source;
	f->tuple.ipv6.dport = tcp.dest;
	f->syn = tcp.syn && !tcp.ack;
	return PARSE_TCP;
}

/* One of PARSE_*: IPv4, and IPv6 when `v6` (captured); anything else is PARSE_OTHER with nothing set. */
static __always_inline int parse(struct __sk_buff *skb, struct flow *f, int v6)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return PARSE_OTHER;
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return parse4(skb, f);
	if (v6 && eth->h_proto == bpf_htons(ETH_P_IPV6))
		return parse6(skb, f);
	return PARSE_OTHER;
}

#define IPV6_EXT_MAX 8 /* extension headers walked before giving up (and dropping: fail closed) */
#define IP6_OFFSET 0xfff8 /* fragment offset in the fragment header, host order */
#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60

static __always_inline int ipv6_ext(__u8 nh)
{
	return nh == NEXTHDR_HOP || nh == NEXTHDR_ROUTING || nh == NEXTHDR_FRAGMENT || nh == NEXTHDR_AUTH || nh == NEXTHDR_DEST;
}

/*
 * Whether an IPv6 packet carries TCP, following the extension headers. Undecidable means yes (fail closed): a header
 * chain longer than IPV6_EXT_MAX, a truncated header, or a later fragment whose first header is TCP or an extension.
 * ICMPv6 (neighbour discovery), UDP and the rest are no.
 */
static __always_inline int ipv6_tcp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + sizeof(struct ethhdr);
	if ((void *)(ip6 + 1) > data_end)
		return 1;
	__u8 nh = ip6->nexthdr;
	__u32 off = sizeof(struct ethhdr) + sizeof(*ip6);
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (nh == IPPROTO_TCP)
			return 1;
		if (!ipv6_ext(nh))
			return 0;
		__u8 h[4];
		if (bpf_skb_load_bytes(skb, off, h, sizeof(h)) < 0)
			return 1;
		if (nh == NEXTHDR_FRAGMENT) {
			if (((h[2] << 8) | h[3]) & IP6_OFFSET)
				return h[0] == IPPROTO_TCP || ipv6_ext(h[0]); /* a later fragment: nothing more to read */
			off += 8;
		} else if (nh == NEXTHDR_AUTH) {
			off += (h[1] + 2) * 4;
		} else {
			off += (h[1] + 1) * 8;
		}
		nh = h[0];
	}
	return 1;
}

struct pseudo6 {
	struct in6_addr saddr;
	struct in6_addr daddr;
	__be32 len;
	__be32 nexthdr;
};

struct rst6 {
	struct ethhdr eth;
	struct ipv6hdr ip6;
	struct tcphdr tcp;
} __attribute__((packed));

/*
 * Rewrites an IPv6 TCP SYN (no extension headers) in place into the RST+ACK a closed port answers it with, addressed back
 * to its sender. Returns 0 when done; anything else leaves the packet as it was (it is then dropped).
 */
static __always_inline int syn_to_rst6(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct rst6 *in = data;
	if ((void *)(in + 1) > data_end)
		return -1;
	if (in->ip6.nexthdr != IPPROTO_TCP || !in->tcp.syn || in->tcp.ack || in->tcp.rst)
		return -1;
	__u32 plen = bpf_ntohs(in->ip6.payload_len);
	__u32 doff = in->tcp.doff * 4;
	if (doff < sizeof(struct tcphdr) || plen < doff)
		return -1;
	struct rst6 r = {};
	__builtin_memcpy(r.eth.h_dest, in->eth.h_source, ETH_ALEN);
	__builtin_memcpy(r.eth.h_source, in->eth.h_dest, ETH_ALEN);
	r.eth.h_proto = bpf_htons(ETH_P_IPV6);
	r.ip6.version = 6;
	r.ip6.payload_len = bpf_htons(sizeof(struct tcphdr));
	r.ip6.nexthdr = IPPROTO_TCP;
	r.ip6.hop_limit = 64;
	r.ip6.saddr = in->ip6.daddr;
	r.ip6.daddr = in->ip6.saddr;
	struct tcphdr th = {};
	th.source = in->tcp.dest;
	th.dest = in->tcp.source;
	th.ack_seq = bpf_htonl(bpf_ntohl(in->tcp.seq) + 1 + (plen - doff)); /* the SYN and any data it carried */
	th.doff = sizeof(struct tcphdr) / 4;
	th.rst = 1;
	th.ack = 1;
	struct pseudo6 ph = { .saddr = r.ip6.saddr, .daddr = r.ip6.daddr, .len = bpf_htonl(sizeof(th)), .nexthdr = bpf_htonl(IPPROTO_TCP) };
	__s64 sum = bpf_csum_diff(0, 0, (__be32 *)&ph, sizeof(ph), 0);
	if (sum < 0)
		return -1;
	sum = bpf_csum_diff(0, 0, (__be32 *)&th, sizeof(th), (__u32)sum);
	if (sum < 0)
		return -1;
	__u32 c = (__u32)sum;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	th.check = (__sum16)~c;
	__builtin_memcpy(&r.tcp, &th, sizeof(th));
	if (bpf_skb_change_tail(skb, sizeof(r), 0))
		return -1;
	if (bpf_skb_store_bytes(skb, 0, &r, sizeof(r), 0))
		return -1;
	return 0;
}

/* Whether the flow's source (or destination) is the node's kubelet-probe SNAT address of the flow's family. */
static __always_inline int is_probe(const struct flow *f, int src)
{
	if (!f->v6)
		return bpf_ntohl(src ? f->tuple.ipv4.saddr : f->tuple.ipv4.daddr) == PROBE_SNAT_IP;
	const __be32 *a = src ? f->tuple.ipv6.saddr : f->tuple.ipv6.daddr;
	return a[0] == bpf_htonl(PROBE_SNAT_IP6_0) && a[1] == bpf_htonl(PROBE_SNAT_IP6_1) && a[2] == bpf_htonl(PROBE_SNAT_IP6_2) &&
	       a[3] == bpf_htonl(PROBE_SNAT_IP6_3);
}

/*
 * A kubelet probe over IPv6 (the node SNATs it to PROBE_SNAT_IP6, as for IPv4): at ingress TCP from that address goes
 * to the app untouched; at egress the app's packets to it pass, except a bare SYN (an app dialling that address opens
 * no probe's connection: it is refused like any IPv6 TCP). Both ways only TCP right after the fixed header: behind
 * extension headers (fragments too) it is refused like any IPv6 TCP, as IPv4 refuses a fragment before the probe check.
 */
static __always_inline int probe6(struct __sk_buff *skb, int egress)
{
	struct flow f = {};
	int p = parse6(skb, &f); /* the source is set whenever the fixed header is there; the rest only for PARSE_TCP */
	if (p != PARSE_TCP)
		return 0;
	return egress ? is_probe(&f, 0) && !f.syn : is_probe(&f, 1);
}

/*
 * Refuses an IPv6 TCP packet: a SYN is answered with a RST sent back to where it came from (egress: to the pod's own
 * ingress, for the app; ingress: out of the pod, for the peer), anything else is dropped.
 */
static __always_inline int refuse6(struct __sk_buff *skb, int egress)
{
	count(STAT_DROP_IPV6);
	if (syn_to_rst6(skb))
		return TC_ACT_SHOT;
	skb->mark = IPV6_RESET_MARK;
	return bpf_redirect(skb->ifindex, egress ? BPF_F_INGRESS : 0);
}

/*
 * IPv6 TCP is refused both ways when IPv6 is not captured (kubelet probes excepted: probe6): see refuse6.
 * Returns the verdict for IPv6 TCP, -1 for anything else (the caller goes on). Our own RSTs pass on their way back.
 */
static __always_inline int refuse_ipv6_tcp(struct __sk_buff *skb, int egress)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return -1;
	if (skb->mark == IPV6_RESET_MARK || probe6(skb, egress))
		return TC_ACT_OK;
	if (!ipv6_tcp(skb))
		return -1;
	return refuse6(skb, egress);
}

/*
 * What comes before the family-independent decisions: with IPv6 not captured, refuse_ipv6_tcp; with it captured, only
 * our own RSTs pass untouched here (the rest of IPv6 is decided like IPv4). -1: go on.
 */
static __always_inline int ipv6_first(struct __sk_buff *skb, int cap6, int egress)
{
	if (!cap6)
		return refuse_ipv6_tcp(skb, egress);
	return skb->mark == IPV6_RESET_MARK ? TC_ACT_OK : -1;
}

/* The sending socket, when it is a full one (a timewait or request socket, or none, has no storage). */
static __always_inline struct bpf_sock *sender(struct __sk_buff *skb)
{
	struct bpf_sock *sk = skb->sk;
	return sk ? bpf_sk_fullsock(sk) : 0;
}

/* Tags the sending socket as captured: from now on its packets never leave the pod in clear. */
static __always_inline void tag_captured(struct __sk_buff *skb)
{
	struct bpf_sock *sk = sender(skb);
	if (!sk)
		return;
	__u32 *v = bpf_sk_storage_get(&ambient_captured, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (v)
		*v = 1;
}

static __always_inline int is_captured(struct __sk_buff *skb)
{
	struct bpf_sock *sk = sender(skb);
	if (!sk)
		return 0;
	__u32 *v = bpf_sk_storage_get(&ambient_captured, sk, 0, 0);
	return v && *v;
}

static __always_inline int drop_fragment(void)
{
	count(STAT_DROP_FRAGMENT);
	return TC_ACT_SHOT;
}

/* Whether the flow's source (or destination) is the pod's captured address of its family. */
static __always_inline int is_pod(const struct ambient_cfg *cfg, const struct flow *f, int src)
{
	if (!f->v6) {
		__be32 a = src ? f->tuple.ipv4.saddr : f->tuple.ipv4.daddr;
		return a && a == cfg->pod_ip4;
	}
	const __be32 *a = src ? f->tuple.ipv6.saddr : f->tuple.ipv6.daddr;
	return a[0] == cfg->pod_ip6[0] && a[1] == cfg->pod_ip6[1] && a[2] == cfg->pod_ip6[2] && a[3] == cfg->pod_ip6[3];
}

/* Whether the pod has a captured address of the flow's family (IPv6 flows are parsed only when it has). */
static __always_inline int has_family(const struct ambient_cfg *cfg, const struct flow *f)
{
	return f->v6 ? capture6(cfg) : cfg->pod_ip4 != 0;
}

/* 127.0.0.0/8 or ::1. */
static __always_inline int to_loopback(const struct flow *f)
{
	if (!f->v6)
		return (bpf_ntohl(f->tuple.ipv4.daddr) & 0xff000000) == LOOPBACK_NET;
	const __be32 *a = f->tuple.ipv6.daddr;
	return !a[0] && !a[1] && !a[2] && a[3] == bpf_htonl(1);
}

static __always_inline __u16 dport_of(const struct flow *f)
{
	return bpf_ntohs(f->v6 ? f->tuple.ipv6.dport : f->tuple.ipv4.dport);
}

static __always_inline struct bpf_sock *lookup(struct __sk_buff *skb, struct bpf_sock_tuple *t, int v6)
{
	if (v6)
		return bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv6), BPF_F_CURRENT_NETNS, 0);
	return bpf_skc_lookup_tcp(skb, t, sizeof(t->ipv4), BPF_F_CURRENT_NETNS, 0);
}

/* The state of the socket that owns this exact tuple, or -1 when none does. */
static __always_inline int flow_state(struct __sk_buff *skb, struct flow *f, struct bpf_sock **out)
{
	struct bpf_sock *sk = lookup(skb, &f->tuple, f->v6);
	if (!sk)
		return -1;
	int state = sk->state;
	if (out && state == TCP_NEW_SYN_RECV) {
		*out = sk;
		return state;
	}
	bpf_sk_release(sk);
	return state;
}

/*
 * Assigns the packet to the agent's listener at dport: 127.0.0.1 / ::1 for the outbound port, else the pod's address of
 * the flow's family. Drops the packet when there is none (fail closed).
 */
static __always_inline int assign_listener(struct __sk_buff *skb, const struct ambient_cfg *cfg, struct flow *f, __u16 dport)
{
	struct bpf_sock_tuple lt = f->tuple;
	int out = dport == OUTBOUND_PORT;
	if (f->v6) {
		lt.ipv6.daddr[0] = out ? 0 : cfg->pod_ip6[0];
		lt.ipv6.daddr[1] = out ? 0 : cfg->pod_ip6[1];
		lt.ipv6.daddr[2] = out ? 0 : cfg->pod_ip6[2];
		lt.ipv6.daddr[3] = out ? bpf_htonl(1) : cfg->pod_ip6[3];
		lt.ipv6.dport = bpf_htons(dport);
	} else {
		lt.ipv4.daddr = out ? bpf_htonl(0x7f000001) : cfg->pod_ip4;
		lt.ipv4.dport = bpf_htons(dport);
	}
	struct bpf_sock *sk = lookup(skb, &lt, f->v6);
	if (!sk) {
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	if (sk->state != TCP_LISTEN) {
		bpf_sk_release(sk);
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		count(STAT_DROP_NO_LISTENER);
		return TC_ACT_SHOT;
	}
	count(out ? STAT_OUT_ASSIGNED : STAT_IN_ASSIGNED);
	return TC_ACT_OK;
}

SEC("tc")
int ambient_out(struct __sk_buff *skb)
{
	const struct ambient_cfg *cfg = config();
	int cap6 = capture6(cfg);
	int v6 = ipv6_first(skb, cap6, 1);
	if (v6 >= 0)
		return v6;
	if ((skb->mark & AGENT_MARK_MASK) == AGENT_MARK)
		return TC_ACT_OK;
	struct flow f = {};
	int p = parse(skb, &f, cap6);
	if (p == PARSE_TCP_FRAG)
		return drop_fragment();
	if (p == PARSE_TCP_EXT)
		return refuse6(skb, 1);
	if (p != PARSE_TCP)
		return TC_ACT_OK;
	if (!cfg || !has_family(cfg, &f))
		return f.syn ? TC_ACT_SHOT : TC_ACT_OK;
	if (to_loopback(&f) || is_pod(cfg, &f, 0))
		return TC_ACT_OK;
	/* An IPv6 connection from another address of the pod (link-local) is not carried: refused, never sent in clear. */
	if (f.v6 && !is_pod(cfg, &f, 1))
		return f.syn ? refuse6(skb, 1) : TC_ACT_OK;
	/* The agent's SYN mark (OUTBOUND_MARK), taken by an app socket accepted from the agent (tcp_fwmark_accept, with source
	 * preservation): the re-injection rule routes that socket through lo, so here it can only be with the rule gone. It
	 * is captured: re-injected, never sent in clear. */
	if (!f.syn && !is_captured(skb) && !(skb->mark & OUTBOUND_MARK)) {
		/* Later packets of a socket whose SYN was not captured (opened before enrolment): re-injected only when the
		 * agent owns the flow (its accepted socket has the app's tuple); others stay untouched. */
		int state = flow_state(skb, &f, 0);
		if (state < 0 || state == TCP_LISTEN)
			return TC_ACT_OK;
		/* The agent owns the flow: from now on the socket is captured, so its packets stay in the pod even once the
		 * agent's socket is gone. This is also how inbound source preservation works here without tcp_fwmark_accept:
		 * the app's replies to a client address the agent's transparent upstream socket is bound to find that socket
		 * and come back to it. */
		tag_captured(skb);
	}
	skb->mark = (skb->mark & ~OUTBOUND_MARK) | OUTBOUND_MARK;
	if (f.syn) {
		tag_captured(skb);
		count(STAT_OUT_REDIRECTED);
	}
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

SEC("tc")
int ambient_in(struct __sk_buff *skb)
{
	const struct ambient_cfg *cfg = config();
	int cap6 = capture6(cfg);
	int v6 = ipv6_first(skb, cap6, 0);
	if (v6 >= 0)
		return v6;
	struct flow f = {};
	int p = parse(skb, &f, cap6);
	if (p == PARSE_MALFORMED)
		return TC_ACT_SHOT;
	if (p == PARSE_TCP_FRAG)
		return drop_fragment();
	if (p == PARSE_TCP_EXT)
		return refuse6(skb, 0);
	if (!cfg || !has_family(cfg, &f))
		return (p == PARSE_TCP && f.syn) ? TC_ACT_SHOT : TC_ACT_OK;
	int outbound = (skb->mark & OUTBOUND_MARK) && is_pod(cfg, &f, 1);
	if (!outbound) {
		/* accept_local is on for the re-injection (IPv6 has no such check): refuse anything else claiming the pod's own source. */
		if (is_pod(cfg, &f, 1)) {
			count(STAT_DROP_SPOOFED);
			return TC_ACT_SHOT;
		}
		if (p != PARSE_TCP)
			return TC_ACT_OK;
		__u16 dport = dport_of(&f);
		if (!is_pod(cfg, &f, 0)) {
			/* IPv6 to another address of the pod (link-local) is not carried: a SYN is refused, never let in. */
			return (f.v6 && f.syn && !is_probe(&f, 1)) ? refuse6(skb, 0) : TC_ACT_OK;
		}
		if (dport == INBOUND_HBONE_PORT || dport == INBOUND_PLAINTEXT_PORT)
			return TC_ACT_OK;
		if (is_probe(&f, 1))
			return TC_ACT_OK;
		if (!f.syn)
			return TC_ACT_OK;
		int state = flow_state(skb, &f, 0);
		/* A retransmitted SYN of a flow that already has its socket goes to it. Not a TIME_WAIT one: the kernel would
		 * hand that SYN to the app's own listener (TCP_TW_SYN), bypassing the agent. */
		if (state >= 0 && state != TCP_LISTEN && state != TCP_TIME_WAIT)
			return TC_ACT_OK;
		return assign_listener(skb, cfg, &f, INBOUND_PLAINTEXT_PORT);
	}
	if (p != PARSE_TCP)
		return TC_ACT_SHOT;
	/* Re-injected outbound: it carries the gateway's MAC, so make the stack take it as ours. */
	bpf_skb_change_type(skb, PACKET_HOST);
	struct bpf_sock *req = 0;
	int state = flow_state(skb, &f, &req);
	if (req) {
		/* Handshake ACK of a connection still in the accept queue: it must reach the same listener's request. */
		long err = bpf_sk_assign(skb, req, 0);
		bpf_sk_release(req);
		return err ? TC_ACT_SHOT : TC_ACT_OK;
	}
	if (state >= 0 && state != TCP_LISTEN && !(f.syn && state == TCP_TIME_WAIT))
		return TC_ACT_OK;
	if (!f.syn) {
		/* A captured flow whose agent socket is gone: the stack finds no socket and resets the app, inside the pod. */
		count(STAT_OUT_ORPHANED);
		return TC_ACT_OK;
	}
	return assign_listener(skb, cfg, &f, OUTBOUND_PORT);
}

char LICENSE[] SEC("license") = "GPL";
