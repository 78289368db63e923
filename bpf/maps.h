/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map and global of the load balancer (lb.bpf.c), but those it shares
 * with the standalone shield, which live with their code: the shield's in
 * shield_maps.h, the counters in stats.h, the trace ring in trace.h. Names
 * stay within 15 characters (the kernel's map name length).
 */
#ifndef WEIR_MAPS_H
#define WEIR_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"

/* Set by the control plane before load. */
const volatile __u32 ring_size = 65537;
const volatile __u8 iface_mac[6] = {};
/* The same MAC as the low 48 bits of the frame's first 8 bytes, loaded
 * natively (little-endian: the destination MAC): the L2 check is one load,
 * a mask and a compare (lb.bpf.c). */
const volatile __u64 iface_mac_word = 0;
/* Largest IP packet the interface sends: tunnel encapsulation checks it. */
const volatile __u32 iface_mtu = 1500;
/* NAT flow idle timeouts, seconds (docs/nat-tunnel.md). */
const volatile __u32 nat_tcp_timeout = 900;
const volatile __u32 nat_syn_timeout = 30;
const volatile __u32 nat_fin_timeout = 120;
const volatile __u32 nat_udp_timeout = 60;

/* [fragments] (frag.h): off, every fragment goes to the kernel as before. */
const volatile __u8 frag_on = 0;
const volatile __u32 frag_timeout_ms = 1000;

/* Set by the control plane while some VIP is in NAT mode: only then do
 * non-VIP packets pay the reverse lookup. */
__u32 nat_on = 0;
/*
 * Seconds added to the NAT clock. 0 in service; tests age every flow at once
 * with it (the two-CPU ownership test moves it while two CPUs claim ports).
 */
__u32 nat_clock_skew = 0;
/* Set by the control plane while tier.peers names other nodes: new flows
 * go to the flow_sync ring for the daemon to send them. */
__u32 sync_on = 0;

/*
 * Never read by the program: it puts the shared enums into the object's BTF
 * so that Rust gets them from the skeleton instead of a copy.
 */
const volatile struct {
	enum weir_stat stat;
	enum weir_sched sched;
	enum weir_fwd_mode mode;
	enum weir_backend_flags backend_flags;
	enum weir_const limits;
	enum weir_attack_mode attack_mode;
	enum weir_shield_flags shield_flags;
	enum weir_vip_flags vip_flags;
	enum weir_nat_state nat_state;
	enum weir_frag_flags frag_flags;
	struct trace_event trace; /* ring buffer records carry no BTF otherwise */
	struct flow_sync_event sync;
} weir_abi = { .stat = WEIR_STAT_MAX };

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vip_key);
	__type(value, struct vip_meta);
	__uint(max_entries, WEIR_MAX_VIPS);
} vips SEC(".maps");

/* IPv4 VIP addresses this interface answers ARP for; value: the address's
 * enum weir_vip_flags (WEIR_VIP_ECHO: answer ping, icmp.h). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, WEIR_MAX_VIPS);
} vip_arp SEC(".maps");

/* IPv6 VIP addresses this interface answers neighbour solicitations for;
 * value as in vip_arp. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_key);
	__type(value, __u32);
	__uint(max_entries, WEIR_MAX_VIPS);
} vip_nd SEC(".maps");

/*
 * Which destination addresses may be this program's business: a bit per
 * hash of the address (sched.h addr_maybe_ours), set for every VIP address,
 * every NAT / tunnel source address and the probe source. A clear bit lets
 * a packet that is not ours go to the kernel after one array load instead
 * of two VIP lookups. A set bit only means "look further": the filter may
 * say yes wrongly (another address with the same hash), never no wrongly.
 * Its second half has the bits of addresses with a DSR VIP only: a packet
 * to an address without one (a NAT or tunnel VIP's) does not look for an
 * established DSR flow first (lb.bpf.c).
 * The control plane sets an address's bit before it writes what uses the
 * address, and clears bits only after (src/dataplane/filter.rs).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 2 * WEIR_ADDR_FILTER_WORDS);
} addr_filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct backend);
	__uint(max_entries, WEIR_MAX_BACKENDS);
} backends SEC(".maps");

/* Two blocks (live, next) of ring_size backend ids per VIP; resized before load. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16 * 65537);
} maglev_ring SEC(".maps");

/* Two blocks of WEIR_RR_SLOTS backend ids per VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, WEIR_MAX_VIPS * WEIR_RR_SLOTS * 2);
} rr_ring SEC(".maps");

/* Shared (not per-CPU) so rotation is exact across CPUs; touched once per new flow. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, WEIR_MAX_VIPS);
} rr_cursor SEC(".maps");

/*
 * Connection tracking, one table per family (flows.h): IPv4 flows under a
 * 16-byte key (struct flow4_key), IPv6 under struct flow_key. max_entries
 * set from the config before load (conntrack.size, conntrack.size_v6).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow4_key);
	__type(value, struct flow);
	__uint(max_entries, 65536);
} flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(max_entries, 65536);
} flows6 SEC(".maps");

/*
 * TCP handshakes in progress (DSR and tunnel VIPs): a SYN's flow lives here
 * until the client's first segment that is not a SYN moves it to the flow
 * table. A SYN flood, spoofed or not, then churns this table only and never
 * evicts an established connection (a round-robin VIP cannot re-derive an
 * evicted flow's backend the way Maglev does). Per family, as the flows.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow4_key);
	__type(value, struct flow);
	__uint(max_entries, 16384);
} syn_flows4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(max_entries, 16384);
} syn_flows6 SEC(".maps");

/*
 * Full NAT, both directions of each flow (see struct nat_rev); sized with
 * flows. The reverse table is a plain (preallocated) hash, not an LRU: an
 * LRU insert into a full table evicts some entry, and evicting a live flow's
 * reverse entry would hand its port, and the backend's next packets, to
 * another client. Full means no port (drop_nat_ports); expired entries are
 * freed by the allocation that probes them and by weir's sweep. The forward
 * table may be an LRU: an entry is only believed while its reverse entry
 * points back at it.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct nat_fwd);
	__uint(max_entries, 65536);
} nat_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct flow_key);
	__type(value, struct nat_rev);
	__uint(max_entries, 65536);
} nat_rev SEC(".maps");

/*
 * IP fragments (frag.h): one entry per datagram in flight. A plain hash, not
 * an LRU: an LRU would evict a datagram's entry under a flood between two of
 * its fragments, and the next one would be placed afresh, splitting the
 * datagram. Full means the datagram is dropped (drop_frag_table_full), never
 * split; weir_frag_sweep frees expired entries. Sized from
 * fragments.max_datagrams before load.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct frag_key);
	__type(value, struct frag_entry);
	__uint(max_entries, 16384);
} frags SEC(".maps");

/*
 * Which VIP a fragment without ports belongs to: (address, protocol, port 0)
 * -> that VIP's key, when the address has exactly one VIP for the protocol
 * (ICMP: exactly one VIP at all); a value with proto 0 says several VIPs
 * could own it. Written by the control plane with the VIPs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct vip_key);
	__type(value, struct vip_key);
	__uint(max_entries, WEIR_MAX_VIPS * 3);
} frag_vips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, WEIR_MAX_TX_PORTS);
} tx_ports SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic);
	__uint(max_entries, WEIR_MAX_VIPS);
} vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct traffic);
	__uint(max_entries, WEIR_MAX_BACKENDS);
} backend_stats SEC(".maps");

/*
 * ICMP too-big answers (tunnel.h), one GCRA per CPU so no CPU writes a line
 * another reads. The kernel's own limit is global
 * (net.ipv4.icmp_msgs_per_sec = 1000, burst 50); this one is the same per
 * CPU, so a flood of packets that claim a spoofed source cannot make weir a
 * reflector.
 */
#define ICMP_INTERVAL_NS 1000000ULL        /* 1000 per second ... */
#define ICMP_BURST_NS (50 * ICMP_INTERVAL_NS) /* ... and a burst of 50 */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64); /* theoretical arrival time */
	__uint(max_entries, 1);
} icmp_budget SEC(".maps");
/*
 * Records for the peers, one GCRA per CPU (like icmp_budget): a flood of
 * new UDP flows from random sources must not become a flood of every peer's
 * flow table. 20,000 records per second and CPU, burst 2,000; past that the
 * flow is served but not offered (sync_limited).
 */
#define SYNC_INTERVAL_NS 50000ULL                /* 20000 per second ... */
#define SYNC_BURST_NS (2000 * SYNC_INTERVAL_NS)  /* ... and a burst of 2000 */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64); /* theoretical arrival time */
	__uint(max_entries, 1);
} sync_budget SEC(".maps");

/* Flows for the other nodes of the tier (struct flow_sync_event). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} flow_sync SEC(".maps");

#endif
