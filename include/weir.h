/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The one definition of everything the BPF programs and the Rust control
 * plane share. Rust reaches these through the skeletons' generated `types`
 * (they are in the objects' BTF because maps use them), never a copy.
 */
#ifndef WEIR_H
#define WEIR_H

#include <linux/types.h>

/* Limits and constants, as an enum so that they reach Rust through BTF. */
enum weir_const {
	WEIR_MAX_VIPS = 64,
	WEIR_MAX_BACKENDS = 4096,
	/* Length of one VIP's weighted round-robin sequence (src/rr.rs). */
	WEIR_RR_SLOTS = 256,
	/* DEVMAP slots for XDP_REDIRECT to other interfaces; 0 means XDP_TX. */
	WEIR_MAX_TX_PORTS = 64,
	/* Flow-hash seed. Fixed so that every weir node picks the same backend. */
	WEIR_HASH_SEED = 0x5745,
	/*
	 * 64-bit words of each half of the address filter (maps.h
	 * addr_filter): 65,536 bits, one per hash of a destination address
	 * (addr_filter_bit). The first half: any address of ours; the second:
	 * addresses with a DSR VIP (where an established flow is looked up
	 * first, lb.bpf.c).
	 */
	WEIR_ADDR_FILTER_WORDS = 1024,
	WEIR_FAMILY_V4 = 4,
	WEIR_FAMILY_V6 = 6,
	/*
	 * Data-path health checks (bpf/probe.h): tx_ports slots the daemon
	 * keeps for the balancer interface itself (a probe leaves by it) and
	 * the prober veth (replies go into it); backends' redirect interfaces
	 * use the slots below them. Probe source ports are
	 * WEIR_PROBE_PORT_LO .. + WEIR_PROBE_PORTS - 1, outside the kernel's
	 * default ephemeral range (32768-60999): weir owns them on the
	 * prober's source address.
	 */
	WEIR_PROBE_SLOT_IFACE = 63,
	WEIR_PROBE_SLOT_VETH = 62,
	WEIR_PROBE_PORT_LO = 61000,
	WEIR_PROBE_PORTS = 1024,
	/*
	 * vip_arp / vip_nd values: enum weir_vip_flags in the low bits, the
	 * address's VLAN id (0: untagged) from this bit on (12 bits).
	 */
	WEIR_NEIGH_VLAN_SHIFT = 16,
};

/* Ring value meaning "this VIP has no usable backend" (u32::MAX in Rust). */
#define WEIR_NO_BACKEND 0xffffffffu
/* struct nat_rev.last_seen while another CPU claims or frees the entry. */
#define WEIR_NAT_BUSY 0xffffffffu

enum weir_sched {
	WEIR_SCHED_MAGLEV = 0,
	WEIR_SCHED_ROUND_ROBIN = 1,
	WEIR_SCHED_SOURCE_HASH = 2,
};

enum weir_fwd_mode {
	WEIR_MODE_DSR = 0,    /* L2 direct server return: MACs only */
	WEIR_MODE_NAT = 1,    /* full NAT: DNAT + SNAT, replies come back through weir */
	WEIR_MODE_TUNNEL = 2, /* L3 DSR: IPIP / IP6IP6 to the backend */
};

enum weir_vip_flags {
	/* tunnel: answer an encapsulation above the MTU with ICMP too-big */
	WEIR_VIP_ICMP_TOO_BIG = 1,
	/*
	 * answer ICMP echo (ping) to the VIP's address from XDP. An echo has no
	 * port, so the data plane reads this bit from the address's entry in
	 * vip_arp / vip_nd (the OR over the VIPs of the address), not from a
	 * vip_meta.
	 */
	WEIR_VIP_ECHO = 2,
	/*
	 * do not answer ARP / neighbour solicitations for the address (a routed
	 * tier announces VIPs by BGP; only one box may answer on a segment).
	 * Read from vip_arp / vip_nd like WEIR_VIP_ECHO (the AND over the VIPs
	 * of the address: the config requires them alike).
	 */
	WEIR_VIP_NO_NEIGH = 4,
	/*
	 * vip_arp / vip_nd only: answer ARP / NDP for the address on any VLAN
	 * (a NAT source address: backends on several VLANs resolve it).
	 */
	WEIR_NEIGH_ANY_VLAN = 8,
};

/*
 * NAT flow states (struct nat_rev.state). A TCP flow is ESTABLISHED (and
 * gets the long timeout) only once the client acknowledged the backend's
 * SYN-ACK: a spoofed SYN, or a SYN and a blind ACK, hold a SNAT port for
 * the SYN timeout only.
 */
enum weir_nat_state {
	WEIR_NAT_SYN_SENT = 0,    /* TCP: the client's SYN seen */
	WEIR_NAT_ESTABLISHED = 1, /* TCP: the handshake completed; every UDP flow */
	WEIR_NAT_CLOSING = 2,     /* a FIN or RST seen */
	WEIR_NAT_SYN_RECV = 3,    /* TCP: the backend's SYN-ACK seen, the client's ACK awaited */
};

enum weir_backend_flags {
	WEIR_BACKEND_ACTIVE = 1,
	/* Its VIP is in DSR mode: an established flow to it is sent on without
	 * the VIP's entry (lb.bpf.c, flow first), with vip_vlan checked. */
	WEIR_BACKEND_VIP_DSR = 2,
};

/* A virtual service. Addresses and port in network byte order. */
struct vip_key {
	__u32 addr[4]; /* IPv4 in addr[0], the rest zero */
	__u16 port;    /* 0: every port of the address */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* WEIR_FAMILY_V4 or WEIR_FAMILY_V6 */
};

struct vip_meta {
	__u32 vip_id;  /* index of its counters, Maglev ring block and rr block */
	__u8 sched;    /* enum weir_sched */
	__u8 mode;     /* enum weir_fwd_mode */
	__u16 rr_len;  /* used entries of its round-robin block */
	/*
	 * Which of the VIP's two Maglev / round-robin blocks is live. The
	 * control plane fills the other one, then flips this with a single
	 * map update: a packet never sees a half-written table.
	 */
	__u32 half;
	/* nat: SNAT address; tunnel: outer source. Network order. */
	__u32 source[4];
	__u16 port_lo;   /* nat: SNAT ports port_lo .. port_lo + port_span - 1 (host order) */
	__u16 port_span;
	__u8 flags;      /* enum weir_vip_flags */
	__u8 pad;
	/*
	 * 802.1Q VLAN id (host order) the VIP is served on: only frames tagged
	 * with it; 0: only untagged (or priority-tagged) frames.
	 */
	__u16 vlan;
};

struct backend {
	__u32 addr[4];
	__u8 mac[6];     /* next hop: the backend itself for L2 DSR */
	__u8 src_mac[6]; /* MAC of the interface the frame leaves by */
	__u32 tx_port;   /* 0: XDP_TX; n > 0: XDP_REDIRECT to DEVMAP slot n */
	__u8 family;
	__u8 flags;      /* enum weir_backend_flags */
	/*
	 * Bumped when a reload gives this id to another backend: flows tracked
	 * to the id's previous owner then no longer match and are rescheduled.
	 */
	__u16 generation;
	__u16 port;      /* nat: backend port, network order; 0: the VIP's */
	/* 802.1Q VLAN id (host order) its frames leave with; 0: untagged */
	__u16 vlan;
	/* Its VIP's vip_meta.vlan: the VLAN the VIP's clients arrive on. */
	__u16 vip_vlan;
};

struct in6_key {
	__u32 addr[4];
};

/* Connection-tracking key: the client's 5-tuple as it reaches the VIP. */
struct flow_key {
	__u32 src[4];
	__u32 dst[4];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/*
 * The IPv4 flow tables' key (flows4, syn_flows4): the same 5-tuple in 16
 * bytes instead of flow_key's 40. The kernel's hash element is 48 bytes of
 * its own plus key and value, so a tracked IPv4 flow costs 72 bytes instead
 * of 96, and the lookup hashes 4 words instead of 10.
 */
struct flow4_key {
	__u32 src;
	__u32 dst;
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct flow {
	__u32 backend_id;
	__u16 vip_id;
	__u16 generation; /* the backend's when the flow was scheduled */
};

/*
 * Flow sync (tier.peers): a flow this node has just made established (or a
 * non-TCP flow it has just scheduled), for the daemon to tell the other
 * nodes of the tier, so the flow keeps its backend wherever ECMP sends its
 * next packet. Records of the flow_sync ring buffer.
 */
struct flow_sync_event {
	struct flow_key key;
	__u32 backend_id;
};


/*
 * Full NAT: two entries per flow, written together. The forward one is
 * keyed by the client's 5-tuple, the reverse one by the backend's reply
 * 5-tuple (backend -> SNAT address). The reverse entry is the flow's
 * authority: it owns the SNAT port, holds the state and the clock; a
 * forward entry is only believed while its reverse entry points back at it.
 */
struct nat_fwd {
	__u32 backend_id;
	__u16 vip_id;
	__u16 generation;
	__u32 source[4]; /* SNAT address */
	__u16 sport;     /* SNAT port, network order */
	__u16 dport;     /* backend port, network order */
};

struct nat_rev {
	__u32 client[4];
	__u32 vip[4];
	__u16 client_port; /* network order */
	__u16 vip_port;
	__u8 client_mac[6]; /* the client frame's source ... */
	__u8 lb_mac[6];     /* ... and destination MAC */
	__u32 backend_id;
	/*
	 * Seconds, coarse monotonic clock; the flow's ownership word: it is
	 * only ever changed by compare-and-swap, and WEIR_NAT_BUSY (never a
	 * time) marks an entry being claimed or freed (bpf/nat.h).
	 */
	__u32 last_seen;
	__u16 vip_id;
	__u8 state;         /* enum weir_nat_state */
	__u8 pad;
	/* SYN_RECV: the acknowledgement that completes the handshake (the
	 * backend's ISN + 1, host order). */
	__u32 ack_expect;
	/* The VLAN id (host order, 0: untagged) replies go to the client
	 * with: the VIP's when the flow was made. */
	__u16 client_vlan;
	__u16 pad2;
};

/*
 * IP fragments to VIPs (bpf/frag.h): one entry per datagram in flight, made
 * by whichever of its fragments arrives first, followed by the rest. Keyed
 * like the kernel's reassembly queue (RFC 791 / RFC 8200).
 */
struct frag_key {
	__u32 src[4];
	__u32 dst[4];
	__u32 id;     /* IPv4: the 16-bit identification; IPv6: the Fragment header's */
	__u8 proto;   /* the datagram's protocol */
	__u8 family;
	__u16 pad;
};

enum weir_frag_flags {
	/* a NAT backend's reply: ports = its reply 5-tuple's, to find the nat_rev entry */
	WEIR_FRAG_NAT_REPLY = 1,
};

/* struct frag_entry.stamp while another CPU reuses or frees the entry. */
#define WEIR_FRAG_BUSY 0xffffffffu

struct frag_entry {
	__u32 backend_id;
	__u16 generation; /* the backend's when the entry was made */
	__u16 vip_port;   /* the VIP's key (port, proto): finds its vip_meta; NAT reply: reply sport */
	__u16 reply_dport; /* NAT reply: the SNAT port */
	__u8 vip_proto;
	__u8 flags;       /* enum weir_frag_flags */
	/* Milliseconds (coarse monotonic) when made: the entry's ownership
	 * word, changed only by compare-and-swap (bpf/frag.h). */
	__u32 stamp;
};

/*
 * Data-path health checks (bpf/probe.h). probe_cfg's one value: where the
 * probers are. Addresses network order, ports host order.
 */
struct probe_cfg {
	__u32 addr[4];      /* the probers' source address (IPv4 in addr[0]) */
	__u8 inner_mac[6];  /* the prober namespace's veth */
	__u8 outer_mac[6];  /* its peer in weir's namespace */
	__u8 family;        /* WEIR_FAMILY_V4 / V6 */
	__u8 pad[3];
};

/*
 * One probe source port's target (probe_targets[port - WEIR_PROBE_PORT_LO]):
 * the VIP it probes and a copy of its backend's entry (a backend out of
 * rotation has its `backends` entry cleared, yet must be probed to return).
 * be.family = 0: no probe on this port.
 */
struct probe_target {
	struct vip_key vip;
	__u32 backend_id;
	struct backend be;
};

/* Per VIP and per backend, per CPU. */
struct traffic {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;
};

/*
 * Global per-CPU counters. The first five are indexed by the XDP action the
 * program returned; the rest say why a packet was passed or dropped.
 */
enum weir_stat {
	WEIR_STAT_XDP_ABORTED = 0,
	WEIR_STAT_XDP_DROP = 1,
	WEIR_STAT_XDP_PASS = 2,
	WEIR_STAT_XDP_TX = 3,
	WEIR_STAT_XDP_REDIRECT = 4,
	/* why a packet went to the kernel */
	WEIR_STAT_PASS_NOT_IP,
	WEIR_STAT_PASS_NOT_VIP,
	WEIR_STAT_PASS_FRAGMENT,
	WEIR_STAT_PASS_IPV6_EXT,
	WEIR_STAT_PASS_UNKNOWN_PROTO,
	WEIR_STAT_PASS_TRUNCATED,
	WEIR_STAT_PASS_MALFORMED,
	WEIR_STAT_PASS_ARP_OTHER,
	/* a unicast frame for another MAC (a flooding bridge, promiscuous mode) */
	WEIR_STAT_PASS_NOT_OUR_MAC,
	/* a broadcast / multicast frame that is not ARP or NDP */
	WEIR_STAT_PASS_L2_GROUP,
	/* why a packet was dropped */
	WEIR_STAT_DROP_NO_BACKEND,
	/* an ARP request for a VIP with arp = false: nobody on this node may
	 * answer it (the kernel would, the VIP being local on the announce device) */
	WEIR_STAT_DROP_ARP_QUIET,
	WEIR_STAT_DROP_TX_PORT,
	/* events */
	WEIR_STAT_ARP_REPLY,
	WEIR_STAT_FLOW_NEW,
	WEIR_STAT_FLOW_HIT,
	WEIR_STAT_FLOW_RESCHEDULED,
	/* flow sync: an event the ring buffer had no room for (the peers miss it) */
	WEIR_STAT_SYNC_LOST,
	/* flow sync: over the per-CPU budget of records (sync_budget), not offered */
	WEIR_STAT_SYNC_LIMITED,
	/* SYN-flood shield verdicts */
	WEIR_STAT_SHIELD_DENIED,
	WEIR_STAT_SHIELD_ALLOWED,
	WEIR_STAT_SHIELD_BUCKET_EMPTY,
	WEIR_STAT_SHIELD_CHALLENGED,
	WEIR_STAT_SHIELD_PROVEN,
	WEIR_STAT_SHIELD_PROOF_FAILED,
	WEIR_STAT_SHIELD_VERIFIED_PASS,
	WEIR_STAT_SHIELD_OUT_OF_STATE,
	WEIR_STAT_SHIELD_NO_CHALLENGE,
	WEIR_STAT_SHIELD_DRY_RUN,
	WEIR_STAT_SHIELD_FLOW_GUARD,
	/* neighbour advertisements sent for IPv6 VIPs */
	WEIR_STAT_NDP_REPLY,
	/* full NAT and tunnels */
	WEIR_STAT_NAT_REPLY,       /* a backend's packet translated back to its client */
	WEIR_STAT_NAT_ICMP,        /* an ICMP error about a NAT flow translated back */
	WEIR_STAT_DROP_NAT_PORTS,  /* no free SNAT port: dropped, never mis-translated */
	WEIR_STAT_DROP_TUNNEL_MTU, /* encapsulated frame above the MTU, no ICMP sent */
	WEIR_STAT_ICMP_TOO_BIG,    /* frag-needed / packet-too-big sent to a client */
	WEIR_STAT_DROP_ENCAP,      /* the frame could not be grown or shrunk */
	WEIR_STAT_DROP_NAT_NOT_SYN, /* TCP to a NAT VIP that is not a SYN and has no flow */
	WEIR_STAT_NAT_LOST_RACE,   /* the flow's port was claimed or freed by another CPU meanwhile */
	/* ICMP for DSR and tunnel VIPs (icmp.h) */
	WEIR_STAT_ICMP_TO_BACKEND, /* an error about a backend's reply sent on to that backend */
	WEIR_STAT_ECHO_REPLY,      /* an echo request to a VIP answered */
	WEIR_STAT_SHIELD_PROOF_STRICT, /* a correct proof held to a second one: proofs fail too often */
	/* IP fragments to VIPs (frag.h) */
	WEIR_STAT_FRAG_BALANCED,     /* a fragment given to its datagram's backend (NAT: or translated back) */
	WEIR_STAT_FRAG_TRACKED,      /* a datagram's entry made by its first fragment */
	WEIR_STAT_FRAG_EARLY,        /* a datagram's entry made without ports: a later fragment arrived first (or ICMP) */
	WEIR_STAT_FRAG_EXPIRED,      /* an entry past the fragment timeout, freed or reused */
	WEIR_STAT_DROP_FRAG_UNRESOLVED, /* an early fragment that several VIPs (or a shielded / NAT TCP VIP) could own;
					 * a first fragment whose (src, dst, proto, ID) entry is another VIP port's */
	WEIR_STAT_DROP_FRAG_TABLE_FULL, /* no room for the datagram's entry (fragments.max_datagrams) */
	WEIR_STAT_DROP_FRAG_BACKEND_GONE, /* the datagram's backend left or changed between its fragments */
	WEIR_STAT_DROP_FRAG_SPLIT,   /* a NAT first fragment whose flow's backend is not its datagram's */
	/* data-path health checks (probe.h) */
	WEIR_STAT_PROBE_SENT,   /* a prober's packet sent to its backend the way client packets go */
	WEIR_STAT_PROBE_REPLY,  /* a backend's packet to a prober port steered into the prober veth */
	WEIR_STAT_DROP_PROBE,   /* a frame from the prober veth that is no known probe (port, VIP, backend) */
	/* a frame for a VIP (or an ARP / NDP request for its address) that
	 * arrived on another VLAN than the VIP's (tagged, for a VIP without vlan) */
	WEIR_STAT_PASS_VLAN,
	WEIR_STAT_MAX,
};

enum weir_attack_mode {
	WEIR_ATTACK_AUTO = 0, /* on above attack_on SYN/s, off below attack_off */
	WEIR_ATTACK_ON = 1,
	WEIR_ATTACK_OFF = 2,
};

enum weir_shield_flags {
	WEIR_SHIELD_DRY_RUN = 1,   /* count what would be dropped, drop nothing */
	WEIR_SHIELD_AGGREGATE = 2, /* token buckets per IPv4 /24 and IPv6 /64 */
};

/* Shield policy of one service (a VIP, or a port in standalone mode). */
struct shield_policy {
	__u64 interval_ns;    /* token bucket: one SYN per interval_ns ... */
	__u64 burst_ns;       /* ... with this much credit (burst x interval) */
	__u64 verified_ttl_ns;
	__u32 attack_on;      /* SYN/s */
	__u32 attack_off;     /* SYN/s */
	__u8 attack_mode;     /* enum weir_attack_mode */
	__u8 flags;           /* enum weir_shield_flags */
	__u16 pad;
	__u32 enabled;
};

/* Shared (not per-CPU): the service's SYN rate and attack state. */
struct shield_state {
	__u64 window_ns;
	__u64 syns;
	__u64 last_rate;  /* SYN/s over the last closed window */
	__u32 attack;
	__u32 pad;
};

struct src_key {
	__u32 addr[4];
	__u32 policy;   /* token buckets are per service; 0 for verified sources */
	__u32 family;
};

/* A challenge sent: the sequence number the client's RST must carry. */
struct challenge {
	__u32 expect_seq; /* host order */
	__u32 pad;
	__u64 sent_ns;
};

struct lpm_v4 {
	__u32 prefixlen;
	__u32 addr;
};

struct lpm_v6 {
	__u32 prefixlen;
	__u32 addr[4];
};

/* One sampled packet, for `weir trace`. */
struct trace_event {
	struct flow_key key;
	__u64 ts_ns;
	__u32 backend_id; /* WEIR_NO_BACKEND when none */
	__u32 vip_id;     /* WEIR_NO_BACKEND when none */
	__u32 len;
	__u16 reason;     /* enum weir_stat of the pass/drop reason, 0 if none */
	__u8 action;      /* XDP action */
	__u8 tcp_flags;
};

/* The global counters of one CPU: the `stats` map's single value. */
struct stat_block {
	__u64 n[WEIR_STAT_MAX];
};

/*
 * `weir bench`'s in-kernel harness (bpf/bench.h): BPF_PROG_TEST_RUN with
 * repeat = N runs the program N times on one frame, which keeps what the
 * previous run rewrote; the harness puts the original frame back before
 * every run. Written by the bench; never used by the production program.
 */
#define WEIR_BENCH_FRAME_MAX 256
struct bench_scratch {
	__u64 first_data; /* the program: the frame's start at run 0 (a pointer value, never read through) */
	__u64 cur_data;   /* the program: the frame's start at this run */
	__u32 iter;       /* runs so far: the bench sets 0 before each batch */
	__u32 len;        /* the original frame's length */
	__u32 live;       /* 1: live frames (the kernel resets start and length, not the bytes) */
	__u32 vary;       /* 1: run i comes from client i (below) */
	__u32 vary_shift; /* client i: IPv4 source + (i >> shift), source port + (i & (2^shift - 1)) */
	__u32 vary_mod;   /* i = (vary_from + run) % vary_mod (0: no modulus) */
	__u32 vary_from;
	__u32 pad;
	__u8 frame[WEIR_BENCH_FRAME_MAX];
};

#endif /* WEIR_H */
