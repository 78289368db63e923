/* SPDX-License-Identifier: GPL-2.0 */
/*
 * IP fragments to VIPs ([fragments], README "Fragments"). Every fragment of
 * a datagram goes to one backend, in every mode:
 *
 * - The first fragment (offset 0) carries the ports: it is balanced like any
 *   packet of its flow (flow table, scheduler, NAT flow), and makes the
 *   datagram's entry in `frags` (frag_table.h) naming that backend.
 * - Later fragments follow the entry: DSR gets new MACs, tunnel each
 *   fragment its own outer header, NAT new addresses (the ports and the L4
 *   checksum, which covers the whole datagram, are in the first fragment
 *   only; the incremental update there stays right for the whole).
 * - A fragment that arrives before its first fragment makes the entry
 *   itself, with a choice that needs no ports: the VIP is the only one of
 *   its address for that protocol (frag_vips; several: dropped, never
 *   guessed), the backend that VIP's scheduler gives for (source, destination,
 *   protocol, identification) -- for a source-hash VIP exactly its flows'
 *   backend. The first fragment, when it comes, follows the entry (a new
 *   NAT flow is made to that backend), so the datagram is never split.
 * - A NAT backend's fragmented reply: its first fragment makes an entry
 *   naming the NAT flow; the later ones follow it back to the client. A
 *   later reply fragment that arrives first goes to the kernel.
 *
 * The per-packet cost for anything else is the `pkt->frag` tests.
 */
#ifndef WEIR_FRAG_H
#define WEIR_FRAG_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "csum.h"
#include "jhash.h"
#include "sched.h"
#include "forward.h"
#include "tunnel.h"
#include "nat.h"
#include "frag_table.h"

/* A datagram's hash without ports: (source, destination, identification). */
static __always_inline __u32 frag_hash(const struct frag_key *k)
{
	__u32 h;

	if (k->family == WEIR_FAMILY_V4)
		return jhash_3words(k->src[0], k->dst[0], k->id, WEIR_HASH_SEED ^ k->proto);
	h = jhash_3words(k->src[0], k->src[1], k->src[2], WEIR_HASH_SEED ^ k->proto);
	return jhash_3words(k->src[3], k->dst[0] ^ k->dst[1] ^ k->dst[2] ^ k->dst[3], k->id, h);
}

/* The backend of a datagram whose first fragment has not been seen. */
static __always_inline __u32 frag_pick(const struct vip_meta *vip, const struct packet *pkt, const struct frag_key *fk)
{
	switch (vip->sched) {
	case WEIR_SCHED_ROUND_ROBIN:
		return round_robin_pick(vip);
	case WEIR_SCHED_SOURCE_HASH:
		return ring_pick(vip, source_hash(&pkt->key));
	default:
		return ring_pick(vip, frag_hash(fk));
	}
}

/* The VIP an entry names: its port, else the address's port 0 (as find_vip). */
static __always_inline struct vip_meta *frag_vip(const struct packet *pkt, __u16 port, __u8 proto)
{
	struct vip_key vk = {};
	struct vip_meta *vip;

	__builtin_memcpy(vk.addr, pkt->key.dst, sizeof(vk.addr));
	vk.port = port;
	vk.proto = proto;
	vk.family = pkt->key.family;
	vip = bpf_map_lookup_elem(&vips, &vk);
	if (vip || port == 0)
		return vip;
	vk.port = 0;
	return bpf_map_lookup_elem(&vips, &vk);
}

/*
 * New addresses for a fragment without a transport header to rewrite (or,
 * ICMP, one whose checksum covers no ports). IPv4: the header checksum;
 * the first fragment of an ICMPv6 datagram: its checksum covers the
 * addresses. 0, or -1 when the headers are not where the parser left them.
 */
static __always_inline int frag_l3_rewrite(void *data, void *data_end, const struct packet *pkt, const __u32 *nsrc,
					   const __u32 *ndst)
{
	__u32 l4 = pkt->l4_off, acc = 0;

	if (l4 > 18 + 60 || l3_rewrite(data, data_end, pkt, nsrc, ndst, &acc))
		return -1;
	if (pkt->frag == FRAG_FIRST && pkt->key.proto == IPPROTO_ICMPV6) {
		__u16 *ck = data + l4 + 2;

		if ((void *)(ck + 1) > data_end)
			return -1;
		*ck = csum_apply(*ck, acc);
	}
	return 0;
}

/* A fragment to its datagram's backend, the way its VIP sends a client packet. */
static __always_inline int frag_send(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
				     const struct vip_meta *vip, const struct backend *be, __u32 bid, __u64 bytes)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + sizeof(struct ethhdr) > data_end)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	traffic_add(&vip_stats, vip->vip_id, bytes, 0);
	traffic_add(&backend_stats, bid, bytes, 0);
	stat_inc(c, WEIR_STAT_FRAG_BALANCED);
	if (vip->mode == WEIR_MODE_TUNNEL)
		return tunnel_encap(c, ctx, pkt, vip, be);
	if (vip->mode == WEIR_MODE_NAT && frag_l3_rewrite(data, data_end, pkt, vip->source, be->addr))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	return send_tagged(c, ctx, pkt, be);
}

/* A later fragment of a NAT backend's reply whose first fragment was translated. */
static __always_inline int frag_nat_reply(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
					  const struct frag_entry *e, __u32 *bid_out, __u32 *vip_out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct flow_key rk = {};
	struct nat_rev *r;

	__builtin_memcpy(rk.src, pkt->key.src, sizeof(rk.src));
	__builtin_memcpy(rk.dst, pkt->key.dst, sizeof(rk.dst));
	rk.sport = e->vip_port;
	rk.dport = e->reply_dport;
	rk.proto = pkt->key.proto;
	rk.family = pkt->key.family;
	r = bpf_map_lookup_elem(&nat_rev, &rk);
	if (!r || r->backend_id != e->backend_id || !nat_live_at(READ_ONCE(r->last_seen), r->state, rk.proto, nat_now(), 0))
		return drop_because(c, WEIR_STAT_DROP_FRAG_BACKEND_GONE);
	if ((void *)(eth + 1) > data_end)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	*bid_out = r->backend_id;
	*vip_out = r->vip_id;
	if (frag_l3_rewrite(data, data_end, pkt, r->vip, r->client))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	if (nat_client_tag(ctx, pkt, r))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	eth = (void *)(long)ctx->data;
	if ((void *)(eth + 1) > (void *)(long)ctx->data_end)
		return verdict(c, XDP_ABORTED);
	__builtin_memcpy(eth->h_dest, r->client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, r->lb_mac, ETH_ALEN);
	stat_inc(c, WEIR_STAT_FRAG_BALANCED);
	stat_inc(c, WEIR_STAT_NAT_REPLY);
	return verdict(c, XDP_TX);
}

/*
 * A fragment without ports: a later fragment, or any fragment of an ICMP
 * datagram. The XDP action, or -1 (not a VIP's: the caller passes it).
 */
static __always_inline int frag_later(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt, __u64 bytes,
				      __u32 *bid_out, __u32 *vip_out)
{
	struct frag_key fk = {};
	struct frag_entry e = {};
	struct vip_meta *vip;
	struct backend *be;
	__u32 now = frag_now(), bid;
	int rc;

	frag_key_of(&fk, pkt);
	rc = frag_read(&fk, now, &e);
	if (rc == FRAG_BUSY)
		return drop_because(c, WEIR_STAT_DROP_FRAG_UNRESOLVED);
	if (rc == FRAG_NONE_YET) {
		struct vip_key vk = {};
		struct vip_key *fv;
		struct frag_entry want = { .stamp = now };

		/* The first of its datagram to arrive: place the datagram. */
		__builtin_memcpy(vk.addr, pkt->key.dst, sizeof(vk.addr));
		vk.proto = pkt->key.proto;
		vk.family = pkt->key.family;
		fv = bpf_map_lookup_elem(&frag_vips, &vk);
		if (!fv)
			return -1;
		if (fv->proto == 0)
			return drop_because(c, WEIR_STAT_DROP_FRAG_UNRESOLVED);
		want.vip_port = fv->port;
		want.vip_proto = fv->proto;
		vip = frag_vip(pkt, want.vip_port, want.vip_proto);
		if (!vip)
			return drop_because(c, WEIR_STAT_DROP_FRAG_UNRESOLVED);
		/* A VIP is served on its own VLAN only (lb.bpf.c). */
		if ((pkt->tci & VLAN_VID_MASK) != vip->vlan)
			return pass_because(c, WEIR_STAT_PASS_VLAN);
		/* A TCP datagram's first fragment may be a SYN the shield must
		 * see, or need a NAT flow only a SYN opens: not placed blind. */
		if (pkt->key.proto == IPPROTO_TCP && (vip->mode == WEIR_MODE_NAT || shield_on))
			return drop_because(c, WEIR_STAT_DROP_FRAG_UNRESOLVED);
		bid = frag_pick(vip, pkt, &fk);
		be = bpf_map_lookup_elem(&backends, &bid);
		if (!be || !(be->flags & WEIR_BACKEND_ACTIVE))
			return drop_because(c, WEIR_STAT_DROP_NO_BACKEND);
		want.backend_id = bid;
		want.generation = be->generation;
		rc = frag_bind(c, &fk, &want, now, &e);
		if (rc < 0)
			return drop_because(c, frag_fail_reason(rc));
		if (rc == FRAG_FOUND)
			stat_inc(c, WEIR_STAT_FRAG_EARLY);
	}
	if (e.flags & WEIR_FRAG_NAT_REPLY)
		return frag_nat_reply(c, ctx, pkt, &e, bid_out, vip_out);
	vip = frag_vip(pkt, e.vip_port, e.vip_proto);
	bid = e.backend_id;
	be = bpf_map_lookup_elem(&backends, &bid);
	if (!vip || !be || !(be->flags & WEIR_BACKEND_ACTIVE) || be->generation != e.generation)
		return drop_because(c, WEIR_STAT_DROP_FRAG_BACKEND_GONE);
	if ((pkt->tci & VLAN_VID_MASK) != vip->vlan)
		return pass_because(c, WEIR_STAT_PASS_VLAN);
	*bid_out = bid;
	*vip_out = vip->vip_id;
	return frag_send(c, ctx, pkt, vip, be, bid, bytes);
}

#endif
