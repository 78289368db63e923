/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ICMP addressed to a VIP (README "ICMP and ping"):
 *
 * - Errors about a backend's reply. DSR and tunnel backends answer clients
 *   directly, from the VIP; a router that cannot forward such a reply (too
 *   big for the next link, TTL out, no route) sends its error to the VIP,
 *   and so to weir, whose kernel does not own the VIP. Left there, the
 *   backend never learns the path MTU (a PMTU black hole). The quoted
 *   packet, VIP:port -> client:port, reversed is the client's tuple: its
 *   flow (or, untracked, the backend a new packet of that tuple would be
 *   scheduled to: Maglev and source hash give the same one; no state is
 *   made) gets the error as it came, like a client packet: new MACs (DSR)
 *   or encapsulated (tunnel). Handled: IPv4 type 3 (destination
 *   unreachable, every code: frag-needed is the one that matters) and 11
 *   (time exceeded); ICMPv6 types 1 (unreachable), 2 (packet too big) and
 *   3 (time exceeded): the same set nat.h translates for NAT flows. NAT
 *   VIPs' errors are left to the kernel.
 *
 * - Echo requests (ping) to a VIP address whose entry in vip_arp / vip_nd
 *   has WEIR_VIP_ECHO: answered in the request's own frame (addresses and
 *   MACs swapped, TTL / hop limit 64, type echo reply).
 *
 * Every read is bounds-checked against data_end; lengths the packet claims
 * are only believed after they are checked against the frame.
 */
#ifndef WEIR_ICMP_H
#define WEIR_ICMP_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "csum.h"
#include "sched.h"
#include "forward.h"
#include "tunnel.h"
#include "nat.h"
#include "flows.h"

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129

/* Ethernet's minimum frame (without FCS): shorter packets arrive padded. */
#define ETH_MIN_FRAME 60

/*
 * An ICMP error whose quoted packet left a DSR or tunnel VIP: sent on to
 * the backend of the quoted flow. The XDP action, or -1 (not such an error:
 * the caller goes on).
 */
static __always_inline int icmp_error_to_backend(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
						 __u64 bytes, __u32 *bid_out, __u32 *vip_out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off;
	int v4 = pkt->key.family == WEIR_FAMILY_V4;
	struct flow_key k = {};
	struct vip_meta *vip;
	struct backend *be = NULL;
	struct flow *f;
	__u32 qsrc[4] = {}, inner_l4, ip_len, bid;
	__u16 *ports;
	__u8 *icmp;
	int action;

	if ((void *)(eth + 1) > data_end || l3 > 18 || l4 > 18 + 60)
		return -1;
	icmp = data + l4;
	if ((void *)(icmp + 8) > data_end)
		return -1;
	if (v4) {
		struct iphdr *iph = data + l3;
		struct iphdr *in = (void *)(icmp + 8);

		if (icmp[0] != ICMP_DEST_UNREACH && icmp[0] != ICMP_TIME_EXCEEDED)
			return -1;
		if ((void *)(iph + 1) > data_end || (void *)(in + 1) > data_end)
			return -1;
		ip_len = bpf_ntohs(iph->tot_len);
		/* A later fragment of the reply quotes no ports. */
		if (in->version != 4 || in->ihl < 5 || (in->frag_off & bpf_htons(IP_OFFSET)) ||
		    (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP))
			return -1;
		k.proto = in->protocol;
		qsrc[0] = in->saddr;
		k.src[0] = in->daddr;
		inner_l4 = l4 + 8 + in->ihl * 4;
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct ipv6hdr *in = (void *)(icmp + 8);

		if (icmp[0] != ICMPV6_DEST_UNREACH && icmp[0] != ICMPV6_PKT_TOOBIG && icmp[0] != ICMPV6_TIME_EXCEED)
			return -1;
		if ((void *)(ip6 + 1) > data_end || (void *)(in + 1) > data_end)
			return -1;
		ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
		/* A quoted extension header hides the ports: not followed. */
		if (in->version != 6 || (in->nexthdr != IPPROTO_TCP && in->nexthdr != IPPROTO_UDP))
			return -1;
		k.proto = in->nexthdr;
		__builtin_memcpy(qsrc, &in->saddr, 16);
		__builtin_memcpy(k.src, &in->daddr, 16);
		inner_l4 = l4 + 8 + sizeof(*in);
	}
	/* Sent to the address the quoted packet left from. */
	if (!addr_eq(pkt->key.dst, qsrc))
		return -1;
	if (inner_l4 > 18 + 60 + 8 + 60)
		return -1;
	ports = data + inner_l4;
	if ((void *)(ports + 2) > data_end)
		return -1;
	/* The reply went VIP:port -> client:port; the client's tuple is the
	 * other way round. */
	__builtin_memcpy(k.dst, qsrc, sizeof(k.dst));
	k.sport = ports[1];
	k.dport = ports[0];
	k.family = pkt->key.family;
	vip = find_vip(&k);
	if (!vip || (vip->mode != WEIR_MODE_DSR && vip->mode != WEIR_MODE_TUNNEL))
		return -1;
	/* From the VIP's own VLAN only, as its traffic. */
	if ((pkt->tci & VLAN_VID_MASK) != vip->vlan)
		return -1;
	/* The frame must hold the packet the IP header describes (Ethernet
	 * padding aside), and that packet what was read of it (up to the
	 * quoted ports): the tunnel's outer header takes its length from it. */
	if (l3 + ip_len > bytes || l3 + ip_len < inner_l4 + 4)
		return -1;
	/* Never an ICMP error about an ICMP error: one that would not fit once
	 * encapsulated (an MTU near the minimum) goes to the kernel. */
	if (vip->mode == WEIR_MODE_TUNNEL && ip_len + (v4 ? 20 : 40) > iface_mtu)
		return -1;

	f = flow_find(&k);
	if (f) {
		bid = f->backend_id;
		be = bpf_map_lookup_elem(&backends, &bid);
		if (be && (!(be->flags & WEIR_BACKEND_ACTIVE) || be->generation != f->generation))
			be = NULL;
	}
	if (!be) {
		/* Round-robin keeps no trace of an untracked flow's backend:
		 * a guess would tell the wrong host (and turn the rotation). */
		if (vip->sched == WEIR_SCHED_ROUND_ROBIN)
			return -1;
		bid = schedule(vip, &k);
		be = bpf_map_lookup_elem(&backends, &bid);
		if (!be || !(be->flags & WEIR_BACKEND_ACTIVE))
			return -1;
	}
	*bid_out = bid;
	*vip_out = vip->vip_id;
	if (vip->mode == WEIR_MODE_TUNNEL)
		action = tunnel_encap(c, ctx, pkt, vip, be);
	else
		action = send_tagged(c, ctx, pkt, be);
	if (action == XDP_TX || action == XDP_REDIRECT)
		stat_inc(c, WEIR_STAT_ICMP_TO_BACKEND);
	return action;
}

/* A source an echo reply may go to: not unspecified, multicast, broadcast
 * or loopback. */
static __always_inline int echo_source_ok(const __u32 *a, int v4)
{
	if (v4) {
		__u8 b0 = bpf_ntohl(a[0]) >> 24;

		return a[0] != 0 && a[0] != 0xffffffff && b0 != 127 && (b0 & 0xf0) != 0xe0;
	}
	if ((bpf_ntohl(a[0]) >> 24) == 0xff)
		return 0;
	return (a[0] | a[1] | a[2]) != 0 || (a[3] != 0 && a[3] != bpf_htonl(1));
}

/*
 * An echo request to a VIP address that answers ping: the reply, built in
 * the same frame. The XDP action, or -1 (not ours). The ICMP checksum is
 * updated incrementally (RFC 1624) for the one word that changes (type),
 * so a request that arrived with a bad checksum gets a reply with a bad
 * checksum, which the client discards (the echoed data is not read).
 */
static __always_inline int icmp_echo(struct stat_block *c, void *data, void *data_end, struct packet *pkt,
				     __u64 bytes)
{
	struct ethhdr *eth = data;
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off, ip_len, *flags;
	int v4 = pkt->key.family == WEIR_FAMILY_V4;
	__u8 mac[ETH_ALEN];
	__u16 old, *check;
	__u8 *icmp;

	if ((void *)(eth + 1) > data_end || l3 > 18 || l4 > 18 + 60)
		return -1;
	icmp = data + l4;
	if ((void *)(icmp + 8) > data_end)
		return -1;
	if (v4) {
		struct iphdr *iph = data + l3;

		if (icmp[0] != ICMP_ECHO || icmp[1] != 0)
			return -1;
		if ((void *)(iph + 1) > data_end)
			return -1;
		flags = bpf_map_lookup_elem(&vip_arp, &pkt->key.dst[0]);
		if (!flags || !(*flags & WEIR_VIP_ECHO) || !neigh_vlan_ok(*flags, pkt))
			return -1;
		/* No options (the reply would have to echo some), not a
		 * fragment (the parser passes those already), a valid header. */
		if (iph->ihl != 5 || (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) ||
		    csum_fold(csum_words(iph, sizeof(*iph) / 2)) != 0)
			return -1;
		ip_len = bpf_ntohs(iph->tot_len);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if (icmp[0] != ICMPV6_ECHO_REQUEST || icmp[1] != 0)
			return -1;
		if ((void *)(ip6 + 1) > data_end)
			return -1;
		flags = bpf_map_lookup_elem(&vip_nd, pkt->key.dst);
		if (!flags || !(*flags & WEIR_VIP_ECHO) || !neigh_vlan_ok(*flags, pkt))
			return -1;
		ip_len = bpf_ntohs(ip6->payload_len) + sizeof(*ip6);
	}
	/* The IP length must be the frame's: exactly, or shorter only by
	 * Ethernet's padding of a short frame. */
	if (l3 + ip_len != bytes && !(bytes == ETH_MIN_FRAME && l3 + ip_len < bytes))
		return -1;
	if (ip_len < (l4 - l3) + 8)
		return -1;
	if (!echo_source_ok(pkt->key.src, v4) || (eth->h_dest[0] & 1))
		return -1;

	if (v4) {
		struct iphdr *iph = data + l3;

		if ((void *)(iph + 1) > data_end)
			return -1;
		iph->saddr = pkt->key.dst[0];
		iph->daddr = pkt->key.src[0];
		iph->ttl = 64;
		iph->check = 0;
		iph->check = csum_fold(csum_words(iph, sizeof(*iph) / 2));
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return -1;
		/* The pseudo-header's sum does not change with the order of
		 * the addresses. */
		__builtin_memcpy(&ip6->saddr, pkt->key.dst, 16);
		__builtin_memcpy(&ip6->daddr, pkt->key.src, 16);
		ip6->hop_limit = 64;
	}
	old = *(__u16 *)icmp;
	icmp[0] = v4 ? ICMP_ECHOREPLY : ICMPV6_ECHO_REPLY;
	check = (__u16 *)(icmp + 2);
	*check = csum_apply(*check, csum_diff16(0, old, *(__u16 *)icmp));
	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	stat_inc(c, WEIR_STAT_ECHO_REPLY);
	return verdict(c, XDP_TX);
}

/* ICMP / ICMPv6 that is not for the kernel: the XDP action, or -1. */
static __always_inline int icmp_vip(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt, __u64 bytes,
				    __u32 *bid_out, __u32 *vip_out)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *icmp = data + pkt->l4_off;

	if (pkt->key.proto != (pkt->key.family == WEIR_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return -1;
	if (pkt->l4_off > 18 + 60 || (void *)(icmp + 1) > data_end)
		return -1;
	if (icmp[0] == ICMP_ECHO || icmp[0] == ICMPV6_ECHO_REQUEST)
		return icmp_echo(c, data, data_end, pkt, bytes);
	return icmp_error_to_backend(c, ctx, pkt, bytes, bid_out, vip_out);
}

#endif
