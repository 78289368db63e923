// SPDX-License-Identifier: GPL-2.0
/*
 * weir's load balancer: the packet's path, top to bottom.
 *   parse (Ethernet, 802.1Q, IPv4/IPv6, TCP/UDP) -> ARP for VIPs
 *   -> VIP lookup (port, then port 0) -> flow table (keep the backend)
 *   -> schedule a new flow -> rewrite and send (XDP_TX or DEVMAP redirect):
 *      DSR (MACs), NAT (nat.h) or tunnel (tunnel.h)
 *   Not a VIP: a NAT flow's reply, or an ICMP error about one (nat.h); a
 *   backend's answer to a data-path health check (probe.h).
 *   ICMP to a VIP (icmp.h): echo answered; an error about a DSR or tunnel
 *   backend's reply sent on to that backend.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"
#include "maps.h"
#include "stats.h"
#include "parse.h"
#include "arp.h"
#include "ndp.h"
#include "sched.h"
#include "flows.h"
#include "forward.h"
#include "shield.h"
#include "admit.h"
#include "nat.h"
#include "tunnel.h"
#include "icmp.h"
#include "frag.h"
#include "probe.h"
#include "bench.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * The frame's destination MAC as the low 48 bits of its first 8 bytes
 * (x86 and arm64 are little-endian; the loader builds iface_mac_word the
 * same way). parse_eth checked the 14-byte header fits.
 */
#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "dest_mac_word assumes a little-endian target"
#endif
static __always_inline __u64 dest_mac_word(void *data)
{
	return *(const __u64 *)data & 0xffffffffffffULL;
}

/*
 * Tell the other nodes of the tier (sync_on): no wakeup, the daemon
 * collects the ring every few milliseconds. A full ring loses the event and
 * says so; the flow itself is unaffected.
 */
static __always_inline void sync_flow(struct stat_block *c, const struct flow_key *k, __u32 backend_id)
{
	struct flow_sync_event e = { .key = *k, .backend_id = backend_id };

	if (!percpu_budget_take(&sync_budget, SYNC_INTERVAL_NS, SYNC_BURST_NS)) {
		stat_inc(c, WEIR_STAT_SYNC_LIMITED);
		return;
	}
	if (bpf_ringbuf_output(&flow_sync, &e, sizeof(e), BPF_RB_NO_WAKEUP))
		stat_inc(c, WEIR_STAT_SYNC_LOST);
}

/* The packet's path; what it chose goes to the trace through bid_out / vip_out. */
static __always_inline int process(struct xdp_md *ctx, struct packet *pkt, __u32 *bid_out, __u32 *vip_out,
				   __u32 *len_out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 bytes = data_end - data;
	struct stat_block *c = counters();
	struct vip_meta *vip;
	struct backend *be;
	struct flow *f = NULL;
	__u32 bid = WEIR_NO_BACKEND, fnow = 0;
	int new_flow = 0, in_handshake = 0, followed = 0, looked = 0;
	int rc, group;

	*len_out = bytes;
	rc = parse_eth(data, data_end, pkt);
	if (rc)
		return pass_because(c, rc);
	/*
	 * L2 hygiene: act only on frames addressed to this interface. A bridge
	 * that floods, or a port in promiscuous mode, must not make two nodes
	 * forward one connection. Group-addressed frames only for ARP / NDP.
	 */
	group = 0;
	{
		__u64 dst = dest_mac_word(data);

		if (dst != iface_mac_word) {
			group = dst & 1; /* the I/G bit of the first byte */
			if (!group)
				return pass_because(c, WEIR_STAT_PASS_NOT_OUR_MAC);
		}
	}
	if (pkt->l3_proto == bpf_htons(ETH_P_IP)) {
		if (group)
			return pass_because(c, WEIR_STAT_PASS_L2_GROUP);
		rc = parse_ipv4(data, data_end, pkt);
	} else if (pkt->l3_proto == bpf_htons(ETH_P_IPV6)) {
		rc = handle_ndp(c, data, data_end, pkt);
		if (rc >= 0)
			return rc;
		if (group)
			return pass_because(c, WEIR_STAT_PASS_L2_GROUP);
		rc = parse_ipv6(data, data_end, pkt);
	}
	else if (pkt->l3_proto == bpf_htons(ETH_P_ARP))
		return handle_arp(c, data, data_end, pkt);
	else
		rc = WEIR_STAT_PASS_NOT_IP;
	if (rc) {
		if (rc == WEIR_STAT_PASS_FRAGMENT && pkt->frag) {
			/* a fragment without ports (frag.h) */
			rc = frag_later(c, ctx, pkt, bytes, bid_out, vip_out);
			if (rc >= 0)
				return rc;
			rc = WEIR_STAT_PASS_FRAGMENT;
		}
		if (rc == WEIR_STAT_PASS_UNKNOWN_PROTO) {
			/* ping to a VIP; an error about a DSR / tunnel reply */
			rc = icmp_vip(c, ctx, pkt, bytes, bid_out, vip_out);
			if (rc >= 0)
				return rc;
			if (nat_on) {
				rc = nat_icmp(c, ctx, pkt);
				if (rc >= 0)
					return rc;
			}
			rc = WEIR_STAT_PASS_UNKNOWN_PROTO;
		}
		return pass_because(c, rc);
	}

	/* Most packets on a shared interface are not ours: one array load
	 * says so (addr_filter in maps.h), before any hash lookup. */
	if (!addr_filter_has(&pkt->key, 0))
		return pass_because(c, WEIR_STAT_PASS_NOT_VIP);
	/*
	 * Flow first: an established flow of a DSR VIP needs nothing of the
	 * VIP's entry. Its backend entry says the VIP is DSR and which VLAN its
	 * clients arrive on, and is live only while the VIP is (a VIP's
	 * backends leave with it; backend ids are per VIP), so the VIP's hash
	 * lookup is skipped. Anything else (no flow, a handshake, a tunnel VIP,
	 * a backend gone, another VLAN) takes the path below with the lookup
	 * done. Only where the address has a DSR VIP (the filter's second
	 * half: NAT flows are never in this table). Not with the shield (it
	 * sees every packet first), nor for a first fragment (frag.h).
	 */
	if (!shield_on && !pkt->frag && addr_filter_has(&pkt->key, 1)) {
		f = flow_find(&pkt->key);
		looked = 1;
		if (f) {
			bid = f->backend_id;
			be = bpf_map_lookup_elem(&backends, &bid);
			if (be && (be->flags & (WEIR_BACKEND_ACTIVE | WEIR_BACKEND_VIP_DSR)) ==
					  (WEIR_BACKEND_ACTIVE | WEIR_BACKEND_VIP_DSR) &&
			    be->generation == f->generation && (pkt->tci & VLAN_VID_MASK) == be->vip_vlan) {
				stat_inc(c, WEIR_STAT_FLOW_HIT);
				*vip_out = f->vip_id;
				*bid_out = bid;
				traffic_add(&vip_stats, f->vip_id, bytes, 0);
				traffic_add(&backend_stats, bid, bytes, 0);
				return send_tagged(c, ctx, pkt, be);
			}
		}
	}
	vip = find_vip(&pkt->key);
	if (!vip) {
		if (nat_on) {
			rc = nat_return(c, ctx, pkt, bid_out, vip_out);
			if (rc >= 0)
				return rc;
		}
		/* A backend's answer to a data-path health check (probe.h). */
		if (probe_on) {
			rc = probe_reply(c, data, data_end, pkt);
			if (rc >= 0)
				return rc;
		}
		return pass_because(c, WEIR_STAT_PASS_NOT_VIP);
	}
	*vip_out = vip->vip_id;
	/* A VIP is served on its own VLAN only (untagged when it has none). */
	if ((pkt->tci & VLAN_VID_MASK) != vip->vlan)
		return pass_because(c, WEIR_STAT_PASS_VLAN);

	/* The shield sits before the flow table: what it stops never gets state. */
	if (shield_on && pkt->key.proto == IPPROTO_TCP) {
		rc = shield_tcp(c, ctx, pkt, vip->vip_id);
		if (rc != SHIELD_CONTINUE)
			return rc;
		/* A challenge may have moved the frame: re-read the pointers. */
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + sizeof(struct ethhdr) > data_end)
			return verdict(c, XDP_DROP);
	}

	if (vip->mode == WEIR_MODE_NAT)
		return nat_forward(c, ctx, pkt, vip, bid_out, bytes);

	if (pkt->frag) {
		/* A first fragment: a later one of its datagram may have come first. */
		fnow = frag_now();
		followed = frag_first_follow(pkt, fnow, &be, &bid);
		if (followed == FRAG_FOUND)
			goto send;
		if (followed < 0)
			return drop_because(c, followed == FRAG_OTHER ? WEIR_STAT_DROP_FRAG_UNRESOLVED
							      : WEIR_STAT_DROP_FRAG_BACKEND_GONE);
	}
	if (!looked)
		f = flow_find(&pkt->key);
	if (!f && pkt->key.proto == IPPROTO_TCP) {
		/* A handshake in progress (see syn_flows4 in maps.h). */
		f = handshake_find(&pkt->key);
		in_handshake = f != NULL;
	}
	if (f) {
		bid = f->backend_id;
		be = bpf_map_lookup_elem(&backends, &bid);
		if (be && (be->flags & WEIR_BACKEND_ACTIVE) && be->generation == f->generation) {
			/* The client's first segment past its SYN: established. */
			if (in_handshake && (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN) {
				flow_store(&pkt->key, f, 0);
				if (sync_on)
					sync_flow(c, &pkt->key, bid);
			}
			stat_inc(c, WEIR_STAT_FLOW_HIT);
			goto send;
		}
		/* Its backend left (or its id went to another): reschedule, not blackhole. */
		stat_inc(c, WEIR_STAT_FLOW_RESCHEDULED);
	}
	be = admit_new_flow(c, pkt, vip, f != NULL, bytes, &bid, &rc);
	if (!be)
		return rc;
	{
		struct flow nf = { .backend_id = bid, .vip_id = vip->vip_id, .generation = be->generation };
		int syn = pkt->key.proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;

		flow_store(&pkt->key, &nf, syn);
		/*
		 * TCP flows are offered when their handshake completes (above),
		 * never from a first packet that is not a SYN: neither a SYN nor
		 * an ACK/RST/data flood from random sources reaches the peers.
		 * UDP flows are offered at once, within sync_budget.
		 */
		if (sync_on && pkt->key.proto == IPPROTO_UDP)
			sync_flow(c, &pkt->key, bid);
	}
	new_flow = 1;
	stat_inc(c, WEIR_STAT_FLOW_NEW);
send:
	if (pkt->frag) {
		/* A first fragment: the rest of its datagram follow (frag.h). */
		if (followed != FRAG_FOUND) {
			__u32 why = frag_first_bind(c, pkt, fnow, &be, &bid, 0);

			if (why)
				return drop_because(c, why);
		}
		stat_inc(c, WEIR_STAT_FRAG_BALANCED);
	}
	*bid_out = bid;
	traffic_add(&vip_stats, vip->vip_id, bytes, new_flow);
	traffic_add(&backend_stats, bid, bytes, new_flow);
	if (vip->mode == WEIR_MODE_TUNNEL)
		return tunnel_encap(c, ctx, pkt, vip, be);
	return send_tagged(c, ctx, pkt, be);
}

static __always_inline int lb_main(struct xdp_md *ctx)
{
	struct packet pkt = {};
	__u32 bid = WEIR_NO_BACKEND, vid = WEIR_NO_BACKEND, len = 0;
	int action = process(ctx, &pkt, &bid, &vid, &len);

	if (trace_every)
		trace_emit(&pkt.key, pkt.tcp_flags, action, bid, vid, len);
	return action;
}

SEC("xdp")
int weir_lb(struct xdp_md *ctx)
{
	return lb_main(ctx);
}

/* The same path under `weir bench`'s harness (bench.h); loaded only by the bench. */
SEC("xdp")
int weir_lb_bench(struct xdp_md *ctx)
{
	if (bench_prepare(ctx))
		return XDP_ABORTED;
	return lb_main(ctx);
}

/* The sweep's input and output, in the frame it is run on (test_run). */
struct nat_sweep_io {
	__u32 margin; /* seconds past expiry before an entry is freed */
	__u32 seen;
	__u32 freed;
	__u32 pad;
};

struct nat_sweep_ctx {
	__u32 now;
	__u32 margin;
	__u32 seen;
	__u32 freed;
};

static long nat_sweep_one(void *map, const struct flow_key *k, struct nat_rev *r, struct nat_sweep_ctx *sc)
{
	__u32 ls = READ_ONCE(r->last_seen);

	sc->seen++;
	if (ls == WEIR_NAT_BUSY || nat_live_at(ls, r->state, k->proto, sc->now, sc->margin))
		return 0;
	/* Free it only if nobody touched or claimed it since `ls` was read. */
	if (__sync_val_compare_and_swap(&r->last_seen, ls, WEIR_NAT_BUSY) != ls)
		return 0;
	bpf_map_delete_elem(&nat_rev, k);
	sc->freed++;
	return 0;
}

/*
 * Free expired NAT flows. Run by weir through BPF_PROG_TEST_RUN on a frame
 * holding a struct nat_sweep_io (never attached): in the kernel, so that
 * every free is the same compare-and-swap the packet path uses (a delete
 * from user space after a lookup could remove a port another CPU had just
 * claimed). Forward entries are left to their LRU: one is believed only
 * while the reverse entry points back at it.
 */
SEC("xdp")
int weir_nat_sweep(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct nat_sweep_io *io = data;
	struct nat_sweep_ctx sc = { .now = nat_now() };

	if ((void *)(io + 1) > data_end)
		return XDP_ABORTED;
	sc.margin = io->margin;
	bpf_for_each_map_elem(&nat_rev, nat_sweep_one, &sc, 0);
	io->seen = sc.seen;
	io->freed = sc.freed;
	return XDP_PASS;
}

/* The sweep's input and output for fragments (test_run), as nat_sweep_io. */
struct frag_sweep_ctx {
	__u32 now;
	__u32 seen;
	__u32 freed;
};

static long frag_sweep_one(void *map, const struct frag_key *k, struct frag_entry *e, struct frag_sweep_ctx *sc)
{
	__u32 st = READ_ONCE(e->stamp);

	sc->seen++;
	if (st == WEIR_FRAG_BUSY || frag_live(st, sc->now))
		return 0;
	/* Free it only if nobody reused it since `st` was read. */
	if (__sync_val_compare_and_swap(&e->stamp, st, WEIR_FRAG_BUSY) != st)
		return 0;
	bpf_map_delete_elem(&frags, k);
	sc->freed++;
	return 0;
}

/*
 * Free datagram entries past the fragment timeout (frag_table.h), in the
 * kernel for the same reason as weir_nat_sweep. Its frame holds a struct
 * nat_sweep_io (margin unused).
 */
SEC("xdp")
int weir_frag_sweep(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct nat_sweep_io *io = data;
	/* Not frag_now(): its BUSY branch gives the verifier a bounded value to
	 * track through every callback, which it cannot prove in time. */
	struct frag_sweep_ctx sc = { .now = bpf_ktime_get_ns() / 1000000 };

	if ((void *)(io + 1) > data_end)
		return XDP_ABORTED;
	/* The counts start from the frame's (zeros): known constants would
	 * have the verifier follow every count through the callback apart and
	 * give up ("sequence of jumps is too complex"). */
	sc.seen = io->seen;
	sc.freed = io->freed;
	bpf_for_each_map_elem(&frags, frag_sweep_one, &sc, 0);
	io->seen = sc.seen;
	io->freed = sc.freed;
	if (sc.freed) {
		struct stat_block *c = counters();

		if (c)
			c->n[WEIR_STAT_FRAG_EXPIRED] += sc.freed;
	}
	return XDP_PASS;
}
