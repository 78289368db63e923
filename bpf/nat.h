/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Full NAT (docs/nat-tunnel.md): client -> VIP becomes SNAT address:port ->
 * backend:port, the backend's reply is translated back, and so are ICMP
 * errors about a flow. Two entries per flow; the reverse one owns the SNAT
 * port, so claiming it with BPF_NOEXIST is the port allocation, and a
 * forward entry is only believed while the reverse entry points back at it:
 * a port that changed hands is never used for its old flow.
 */
#ifndef WEIR_NAT_H
#define WEIR_NAT_H

#include "maps.h"
#include "parse.h"
#include "frag_table.h"
#include "stats.h"
#include "csum.h"
#include "sched.h"
#include "admit.h"
#include "compiler.h"
#include "forward.h"

/* SNAT ports probed for a new flow before it is dropped as "pool full". */
#define NAT_PROBES 16


static __always_inline __u32 nat_now(void)
{
	return bpf_ktime_get_coarse_ns() / 1000000000ULL + nat_clock_skew;
}

static __always_inline __u32 nat_timeout(__u8 state, __u8 proto)
{
	if (proto == IPPROTO_UDP)
		return nat_udp_timeout;
	if (state == WEIR_NAT_ESTABLISHED)
		return nat_tcp_timeout;
	if (state == WEIR_NAT_CLOSING)
		return nat_fin_timeout;
	return nat_syn_timeout; /* SYN_SENT, SYN_RECV */
}

/*
 * Whether a flow last seen at `ls` is live at `now` (+ `margin` seconds of
 * grace). Signed: another CPU may have written a last_seen a second ahead of
 * the `now` this CPU read; that flow is live, not 4e9 s old. An entry being
 * claimed or freed (WEIR_NAT_BUSY) is nobody's.
 */
static __always_inline int nat_live_at(__u32 ls, __u8 state, __u8 proto, __u32 now, __u32 margin)
{
	if (ls == WEIR_NAT_BUSY)
		return 0;
	return (__s32)(now - ls) <= (__s32)(nat_timeout(state, proto) + margin);
}

/*
 * Ownership of a reverse entry (and so of its SNAT port) changes only by a
 * compare-and-swap of last_seen:
 *   - a claim of an expired entry swaps its last_seen for BUSY, rewrites the
 *     entry, then publishes the new time (nat_claim);
 *   - the sweep swaps an expired last_seen for BUSY, then deletes the entry
 *     (weir_nat_sweep); nothing else ever deletes a reverse entry;
 *   - a packet of the flow refreshes last_seen by swapping the value it read
 *     (nat_touch): if that fails with BUSY, the entry changed hands meanwhile
 *     and the packet is not translated with it.
 * So two CPUs can never both own a port: whoever swaps first wins, the
 * others see their swap fail and probe on.
 */

/* A packet of the flow went by, the flow found live at `ls`. The clock is
 * written only when the second changed (no cache-line bounce per packet).
 * 1: still this flow's; 0: another CPU claimed or freed it meanwhile. */
static __always_inline int nat_touch(struct nat_rev *r, const struct packet *pkt, __u32 ls, __u32 now,
				     int from_client)
{
	__u8 fl = pkt->tcp_flags;

	if (ls != now && __sync_val_compare_and_swap(&r->last_seen, ls, now) != ls &&
	    READ_ONCE(r->last_seen) == WEIR_NAT_BUSY)
		return 0;
	/* (A failed swap that left a time: another packet of the flow
	 * refreshed it first.) */
	if (pkt->key.proto != IPPROTO_TCP)
		return 1;
	if (fl & (TCP_FIN | TCP_RST)) {
		if (r->state != WEIR_NAT_CLOSING)
			r->state = WEIR_NAT_CLOSING;
	} else if (from_client) {
		if ((fl & (TCP_SYN | TCP_ACK)) == TCP_SYN) {
			/* The client opens the same tuple again (port reuse after a
			 * close): a new connection, timed as one. */
			if (r->state == WEIR_NAT_CLOSING)
				r->state = WEIR_NAT_SYN_SENT;
		} else if (r->state == WEIR_NAT_SYN_RECV && (fl & TCP_ACK) &&
			   bpf_ntohl(pkt->tcp_ack) == r->ack_expect) {
			/* The client acknowledged the backend's SYN-ACK: it saw it. */
			r->state = WEIR_NAT_ESTABLISHED;
		}
	} else if ((fl & (TCP_SYN | TCP_ACK)) == (TCP_SYN | TCP_ACK) &&
		   (r->state == WEIR_NAT_SYN_SENT || r->state == WEIR_NAT_SYN_RECV)) {
		r->ack_expect = bpf_ntohl(pkt->tcp_seq) + 1;
		if (r->state != WEIR_NAT_SYN_RECV)
			r->state = WEIR_NAT_SYN_RECV;
	}
	return 1;
}

static __always_inline int addr_eq(const __u32 *a, const __u32 *b)
{
	return !((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]));
}

/*
 * Give the parsed packet new addresses (IPv4: its header checksum updated
 * incrementally). *acc gets the checksum difference the addresses make, for
 * a transport checksum over the pseudo-header. 0, or -1 when the header is
 * not where the parser left it. Shared by l34_rewrite and fragments (frag.h).
 */
static __always_inline int l3_rewrite(void *data, void *data_end, const struct packet *pkt, const __u32 *nsrc,
				      const __u32 *ndst, __u32 *acc_out)
{
	__u32 l3 = pkt->l3_off;
	__u32 acc = 0;

	if (l3 > 18)
		return -1;
	/* The family is a constant inside each branch: the helper's loop folds. */
	if (pkt->key.family == WEIR_FAMILY_V4) {
		struct iphdr *iph = data + l3;

		if ((void *)(iph + 1) > data_end)
			return -1;
		acc = csum_diff_addr(acc, pkt->key.src, nsrc, 1);
		acc = csum_diff_addr(acc, pkt->key.dst, ndst, 1);
		iph->saddr = nsrc[0];
		iph->daddr = ndst[0];
		iph->check = csum_apply(iph->check, acc);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		acc = csum_diff_addr(acc, pkt->key.src, nsrc, 0);
		acc = csum_diff_addr(acc, pkt->key.dst, ndst, 0);
		__builtin_memcpy(&ip6->saddr, nsrc, 16);
		__builtin_memcpy(&ip6->daddr, ndst, 16);
	}
	*acc_out = acc;
	return 0;
}

/*
 * Give the parsed packet new addresses and ports, checksums updated
 * incrementally from the parsed (register) values. 0, or -1 when the
 * headers are not where the parser left them.
 */
static __always_inline int l34_rewrite(void *data, void *data_end, const struct packet *pkt, const __u32 *nsrc,
				       const __u32 *ndst, __u16 nsport, __u16 ndport)
{
	__u32 l4 = pkt->l4_off;
	__u32 acc = 0;

	if (l4 > 18 + 60 || l3_rewrite(data, data_end, pkt, nsrc, ndst, &acc))
		return -1;
	/* The L4 checksum covers the addresses (pseudo-header) and the ports. */
	acc = csum_diff16(acc, pkt->key.sport, nsport);
	acc = csum_diff16(acc, pkt->key.dport, ndport);
	if (pkt->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = data + l4;

		if ((void *)(th + 1) > data_end)
			return -1;
		th->source = nsport;
		th->dest = ndport;
		th->check = csum_apply(th->check, acc);
	} else {
		struct udphdr *uh = data + l4;

		if ((void *)(uh + 1) > data_end)
			return -1;
		uh->source = nsport;
		uh->dest = ndport;
		/* 0: the sender did not checksum (IPv4); it stays so. */
		if (uh->check) {
			__u16 c = csum_apply(uh->check, acc);

			uh->check = c ? c : 0xffff;
		}
	}
	return 0;
}

static __always_inline void nat_rev_key(struct flow_key *rk, const struct packet *pkt, const struct backend *be,
					const __u32 *source, __u16 bport, __u16 sport)
{
	__builtin_memcpy(rk->src, be->addr, sizeof(rk->src));
	__builtin_memcpy(rk->dst, source, sizeof(rk->dst));
	rk->sport = bport;
	rk->dport = sport;
	rk->proto = pkt->key.proto;
	rk->family = pkt->key.family;
	rk->pad = 0;
}

/* Claim a free SNAT port for a new flow; 0, or -1 when the probes found none. */
static __always_inline int nat_claim(struct flow_key *rk, const struct nat_rev *nr, const struct vip_meta *vip,
				     __u32 hash, __u32 now)
{
	__u32 span = vip->port_span, lo = vip->port_lo, i, ls;

	if (span == 0)
		return -1;
#pragma clang loop unroll(disable)
	for (i = 0; i < NAT_PROBES && i < span; i++) {
		struct nat_rev *old;

		rk->dport = bpf_htons((__u16)(lo + (hash + i) % span));
		if (!bpf_map_update_elem(&nat_rev, rk, nr, BPF_NOEXIST))
			return 0;
		old = bpf_map_lookup_elem(&nat_rev, rk);
		if (!old)
			continue;
		ls = READ_ONCE(old->last_seen);
		if (nat_live_at(ls, old->state, rk->proto, now, 0))
			continue;
		/* Expired: take it over in place, never delete and re-insert (a
		 * delete could remove what another CPU just claimed). */
		if (ls == WEIR_NAT_BUSY || __sync_val_compare_and_swap(&old->last_seen, ls, WEIR_NAT_BUSY) != ls)
			continue;
		__builtin_memcpy(old, nr, __builtin_offsetof(struct nat_rev, last_seen));
		old->vip_id = nr->vip_id;
		old->state = nr->state;
		old->ack_expect = nr->ack_expect;
		old->client_vlan = nr->client_vlan;
		/* Publish: an atomic exchange, ordered after the writes above. */
		__sync_lock_test_and_set(&old->last_seen, now);
		return 0;
	}
	return -1;
}

/*
 * A client packet to a NAT VIP: find its flow or make one, then translate.
 * The XDP action; *bid_out gets the backend.
 */
static __always_inline int nat_forward(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
				       const struct vip_meta *vip, __u32 *bid_out, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 now = nat_now();
	struct flow_key rk = {};
	struct nat_fwd *f;
	struct nat_rev *r;
	struct backend *be, *fbe = NULL;
	__u32 bid, fbid = WEIR_NO_BACKEND, fnow = 0;
	__u16 sport, dport;
	__u32 source[4];
	int new_flow = 0, action, frc = FRAG_NONE_YET;

	if ((void *)(eth + 1) > data_end)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	/* A first fragment whose datagram a later fragment placed (frag.h):
	 * that backend, for a new flow; a flow bound elsewhere cannot take it. */
	if (pkt->frag) {
		fnow = frag_now();
		frc = frag_first_follow(pkt, fnow, &fbe, &fbid);
		if (frc < 0)
			return drop_because(c, frc == FRAG_OTHER ? WEIR_STAT_DROP_FRAG_UNRESOLVED
							  : WEIR_STAT_DROP_FRAG_BACKEND_GONE);
	}
	f = bpf_map_lookup_elem(&nat_fwd, &pkt->key);
	if (f) {
		bid = f->backend_id;
		be = bpf_map_lookup_elem(&backends, &bid);
		if (be && (be->flags & WEIR_BACKEND_ACTIVE) && be->generation == f->generation) {
			nat_rev_key(&rk, pkt, be, f->source, f->dport, f->sport);
			r = bpf_map_lookup_elem(&nat_rev, &rk);
			if (r) {
				__u32 ls = READ_ONCE(r->last_seen);

				if (nat_live_at(ls, r->state, pkt->key.proto, now, 0) &&
				    r->client_port == pkt->key.sport && r->vip_port == pkt->key.dport &&
				    addr_eq(r->client, pkt->key.src) && addr_eq(r->vip, pkt->key.dst)) {
					if (!nat_touch(r, pkt, ls, now, 1))
						stat_inc(c, WEIR_STAT_NAT_LOST_RACE);
					else {
						__builtin_memcpy(source, f->source, sizeof(source));
						sport = f->sport;
						dport = f->dport;
						stat_inc(c, WEIR_STAT_FLOW_HIT);
						goto send;
					}
				}
			}
		}
		/* Backend gone, flow expired, or its port now another flow's. */
		stat_inc(c, WEIR_STAT_FLOW_RESCHEDULED);
	}
	/* Only a SYN opens a TCP flow: anything else would pin a SNAT port for
	 * a connection the backend never saw (and reset it there anyway). */
	if (pkt->key.proto == IPPROTO_TCP && (pkt->tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN)
		return drop_because(c, WEIR_STAT_DROP_NAT_NOT_SYN);
	if (frc == FRAG_FOUND) {
		be = fbe;
		bid = fbid;
	} else {
		be = admit_new_flow(c, pkt, vip, f != NULL, bytes, &bid, &action);
		if (!be)
			return action;
	}
	{
		struct nat_rev nr = {
			.client_port = pkt->key.sport,
			.vip_port = pkt->key.dport,
			.backend_id = bid,
			.last_seen = now,
			.vip_id = vip->vip_id,
			.state = WEIR_NAT_ESTABLISHED,
			.client_vlan = vip->vlan,
		};
		struct nat_fwd nf = { .backend_id = bid, .vip_id = vip->vip_id, .generation = be->generation };

		__builtin_memcpy(nr.client, pkt->key.src, sizeof(nr.client));
		__builtin_memcpy(nr.vip, pkt->key.dst, sizeof(nr.vip));
		__builtin_memcpy(nr.client_mac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(nr.lb_mac, eth->h_dest, ETH_ALEN);
		if (pkt->key.proto == IPPROTO_TCP)
			nr.state = pkt->tcp_flags & (TCP_FIN | TCP_RST) ? WEIR_NAT_CLOSING : WEIR_NAT_SYN_SENT;
		dport = be->port ? be->port : pkt->key.dport;
		nat_rev_key(&rk, pkt, be, vip->source, dport, 0);
		if (nat_claim(&rk, &nr, vip, flow_hash(&pkt->key), now))
			return drop_because(c, WEIR_STAT_DROP_NAT_PORTS);
		sport = rk.dport;
		__builtin_memcpy(nf.source, vip->source, sizeof(nf.source));
		nf.sport = sport;
		nf.dport = dport;
		bpf_map_update_elem(&nat_fwd, &pkt->key, &nf, BPF_ANY);
		__builtin_memcpy(source, vip->source, sizeof(source));
	}
	new_flow = 1;
	stat_inc(c, WEIR_STAT_FLOW_NEW);
send:
	if (pkt->frag) {
		if (frc == FRAG_FOUND) {
			if (fbid != bid)
				return drop_because(c, WEIR_STAT_DROP_FRAG_SPLIT);
		} else {
			__u32 why = frag_first_bind(c, pkt, fnow, &be, &bid, 1);

			if (why)
				return drop_because(c, why);
		}
		stat_inc(c, WEIR_STAT_FRAG_BALANCED);
	}
	*bid_out = bid;
	traffic_add(&vip_stats, vip->vip_id, bytes, new_flow);
	traffic_add(&backend_stats, bid, bytes, new_flow);
	if (l34_rewrite(data, data_end, pkt, source, be->addr, sport, dport))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	return send_tagged(c, ctx, pkt, be);
}

/*
 * A translated reply goes back on the client's VLAN (the flow's, its VIP's
 * when it was made), with the backend frame's priority. 0, or -1 when the
 * frame could not be grown or shrunk; pointers are stale afterwards.
 */
static __always_inline int nat_client_tag(struct xdp_md *ctx, const struct packet *pkt, const struct nat_rev *r)
{
	__u16 vid = r->client_vlan;

	if (!(pkt->tagged | vid))
		return 0;
	return vlan_set(ctx, pkt->tagged, vid, pkt->tci);
}

/* A backend's reply to the SNAT address: the XDP action, or -1 (not ours). */
static __always_inline int nat_return(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
				      __u32 *bid_out, __u32 *vip_out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 now = nat_now();
	struct nat_rev *r;

	__u32 ls;

	r = bpf_map_lookup_elem(&nat_rev, &pkt->key);
	if (!r)
		return -1;
	ls = READ_ONCE(r->last_seen);
	if (!nat_live_at(ls, r->state, pkt->key.proto, now, 0) || (void *)(eth + 1) > data_end)
		return -1;
	if (!nat_touch(r, pkt, ls, now, 0)) {
		stat_inc(c, WEIR_STAT_NAT_LOST_RACE);
		return -1;
	}
	*bid_out = r->backend_id;
	*vip_out = r->vip_id;
	/* The first fragment of a reply: its later fragments follow it back
	 * (frag.h); no room, and they go to the kernel (the client's
	 * reassembly then times out: the datagram is lost, not split). */
	if (pkt->frag) {
		struct frag_key fk = {};
		struct frag_entry e, want = {
			.backend_id = r->backend_id,
			.vip_port = pkt->key.sport,
			.reply_dport = pkt->key.dport,
			.flags = WEIR_FRAG_NAT_REPLY,
			.stamp = frag_now(),
		};

		frag_key_of(&fk, pkt);
		if (frag_bind(c, &fk, &want, want.stamp, &e) == FRAG_FOUND)
			stat_inc(c, WEIR_STAT_FRAG_TRACKED);
		stat_inc(c, WEIR_STAT_FRAG_BALANCED);
	}
	if (l34_rewrite(data, data_end, pkt, r->vip, r->client, r->vip_port, r->client_port))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	if (nat_client_tag(ctx, pkt, r))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return verdict(c, XDP_ABORTED);
	__builtin_memcpy(eth->h_dest, r->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r->lb_mac, ETH_ALEN);
	stat_inc(c, WEIR_STAT_NAT_REPLY);
	return verdict(c, XDP_TX);
}

/*
 * An ICMP error addressed to a SNAT address, quoting a packet we sent for a
 * live flow (source -> backend): translated so the client sees an error
 * about its own packet (client -> VIP), from the VIP. -1: not ours.
 */
static __always_inline int nat_icmp(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off;
	struct flow_key rk = {};
	struct nat_rev *r;
	__u32 acc = 0, outer = 0, inner_l4;
	__u8 *icmp;
	__u16 *ports, old_sport, old_dport, *check = 0;
	__u32 isrc[4] = {}, idst[4] = {};
	int v4 = pkt->key.family == WEIR_FAMILY_V4;

	if ((void *)(eth + 1) > data_end || l3 > 18 || l4 > 18 + 60)
		return -1;
	/* Bounds against the frame for the verifier, and against the datagram
	 * (ip_end) for the meaning: bytes after the datagram are not quoted. */
	icmp = data + l4;
	if ((void *)(icmp + 8) > data_end || l4 + 8 + (v4 ? 20 : 40) > pkt->ip_end)
		return -1;
	if (v4) {
		struct iphdr *in = (void *)(icmp + 8);

		if (pkt->key.proto != IPPROTO_ICMP || (icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED))
			return -1;
		if ((void *)(in + 1) > data_end || in->ihl != 5 ||
		    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
			return -1;
		rk.proto = in->protocol;
		isrc[0] = in->saddr;
		idst[0] = in->daddr;
		inner_l4 = l4 + 8 + sizeof(*in);
	} else {
		struct ipv6hdr *in = (void *)(icmp + 8);

		if (pkt->key.proto != IPPROTO_ICMPV6 ||
		    (icmp[0] != ICMPV6_DEST_UNREACH && icmp[0] != ICMPV6_PKT_TOOBIG && icmp[0] != ICMPV6_TIME_EXCEED))
			return -1;
		if ((void *)(in + 1) > data_end || (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
			return -1;
		rk.proto = in->nexthdr;
		__builtin_memcpy(isrc, &in->saddr, 16);
		__builtin_memcpy(idst, &in->daddr, 16);
		inner_l4 = l4 + 8 + sizeof(*in);
	}
	if (inner_l4 > 18 + 60 + 8 + 40)
		return -1;
	/* Only errors addressed to the SNAT address the quoted packet left from. */
	if (!addr_eq(pkt->key.dst, isrc))
		return -1;
	ports = data + inner_l4;
	if ((void *)(ports + 2) > data_end || inner_l4 + 4 > pkt->ip_end)
		return -1;
	old_sport = ports[0];
	old_dport = ports[1];
	/* The quoted packet went source -> backend; its flow's reverse key is
	 * the other way round. */
	__builtin_memcpy(rk.src, idst, sizeof(rk.src));
	__builtin_memcpy(rk.dst, isrc, sizeof(rk.dst));
	rk.sport = old_dport;
	rk.dport = old_sport;
	rk.family = pkt->key.family;
	r = bpf_map_lookup_elem(&nat_rev, &rk);
	if (!r || !nat_live_at(READ_ONCE(r->last_seen), r->state, rk.proto, nat_now(), 0))
		return -1;

	/* Quoted packet: client:port -> VIP:port. `acc` collects its address
	 * changes (its L4 pseudo-header), `outer` every word of the ICMP body
	 * that changes, for the ICMP checksum. */
	acc = csum_diff_addr(acc, isrc, r->client, v4);
	acc = csum_diff_addr(acc, idst, r->vip, v4);
	if (v4) {
		struct iphdr *in = (void *)(icmp + 8);
		__u16 oc;

		if ((void *)(in + 1) > data_end)
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
		in->saddr = r->client[0];
		in->daddr = r->vip[0];
		oc = in->check;
		in->check = csum_apply(oc, acc);
		outer = csum_diff16(acc, oc, in->check);
	} else {
		struct ipv6hdr *in = (void *)(icmp + 8);

		if ((void *)(in + 1) > data_end)
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
		__builtin_memcpy(&in->saddr, r->client, 16);
		__builtin_memcpy(&in->daddr, r->vip, 16);
		outer = acc;
	}
	ports = data + inner_l4;
	if ((void *)(ports + 4) <= data_end && inner_l4 + 8 <= pkt->ip_end && rk.proto == IPPROTO_UDP)
		check = ports + 3;
	else if ((void *)(ports + 9) <= data_end && inner_l4 + 18 <= pkt->ip_end && rk.proto == IPPROTO_TCP)
		check = ports + 8;
	if ((void *)(ports + 2) > data_end)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	ports[0] = r->client_port;
	ports[1] = r->vip_port;
	outer = csum_diff16(outer, old_sport, r->client_port);
	outer = csum_diff16(outer, old_dport, r->vip_port);
	if (check && (*check || rk.proto == IPPROTO_TCP)) {
		__u16 oc = *check, nc;

		acc = csum_diff16(acc, old_sport, r->client_port);
		acc = csum_diff16(acc, old_dport, r->vip_port);
		nc = csum_apply(oc, acc);
		if (!nc && rk.proto == IPPROTO_UDP)
			nc = 0xffff;
		*check = nc;
		outer = csum_diff16(outer, oc, nc);
	}

	/* Outer header: VIP -> client. */
	{
		__u32 a = csum_diff_addr(0, pkt->key.src, r->vip, v4);

		a = csum_diff_addr(a, pkt->key.dst, r->client, v4);
		if (v4) {
			struct iphdr *iph = data + l3;

			if ((void *)(iph + 1) > data_end)
				return drop_because(c, WEIR_STAT_DROP_ENCAP);
			iph->saddr = r->vip[0];
			iph->daddr = r->client[0];
			iph->check = csum_apply(iph->check, a);
		} else {
			struct ipv6hdr *iph = data + l3;

			if ((void *)(iph + 1) > data_end)
				return drop_because(c, WEIR_STAT_DROP_ENCAP);
			__builtin_memcpy(&iph->saddr, r->vip, 16);
			__builtin_memcpy(&iph->daddr, r->client, 16);
			/* ICMPv6 sums the pseudo-header too. */
			outer += a;
		}
	}
	icmp = data + l4;
	if ((void *)(icmp + 8) > data_end)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	*(__u16 *)(icmp + 2) = csum_apply(*(__u16 *)(icmp + 2), outer);
	if (nat_client_tag(ctx, pkt, r))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return verdict(c, XDP_ABORTED);
	__builtin_memcpy(eth->h_dest, r->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r->lb_mac, ETH_ALEN);
	stat_inc(c, WEIR_STAT_NAT_ICMP);
	return verdict(c, XDP_TX);
}

#endif
