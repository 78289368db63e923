/* SPDX-License-Identifier: GPL-2.0 */
/*
 * L3 direct server return (docs/nat-tunnel.md): the client's IP packet goes
 * to the backend unchanged inside IPv4-in-IPv4 (RFC 2003) or IPv6-in-IPv6
 * (RFC 2473), so backends may sit in any subnet. The frame grows at its
 * head (bpf_xdp_adjust_head: growing the tail fails on skb-backed veth
 * frames, such as a veth peer's generic path). A packet that would not fit the MTU once wrapped is
 * answered with ICMP too-big, built in the same frame, when the VIP asks
 * for it.
 */
#ifndef WEIR_TUNNEL_H
#define WEIR_TUNNEL_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "csum.h"
#include "forward.h"
#include "ratelimit.h"

#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif

/* One more too-big answer allowed on this CPU now (icmp_budget, maps.h). */
static __always_inline int icmp_allowed(void)
{
	return percpu_budget_take(&icmp_budget, ICMP_INTERVAL_NS, ICMP_BURST_NS);
}

/*
 * ICMP frag-needed (IPv4) / packet-too-big (IPv6) to the client, quoting its
 * IP header and 8 bytes, in its own frame: the quote stays where it is, the
 * new headers go in front of it and the rest is cut.
 */
static __always_inline int send_too_big(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 client_mac[ETH_ALEN], lb_mac[ETH_ALEN];
	int v4 = pkt->key.family == WEIR_FAMILY_V4;
	/* new Ethernet + IP + ICMP header in front of the quote */
	int front = v4 ? ETH_HLEN + 20 + 8 : ETH_HLEN + 40 + 8;
	/* An IPv6 first fragment: 8 more bytes, past its Fragment header to
	 * the transport header, without which the client's stack finds no
	 * socket for the error and learns no path MTU (measured in
	 * tests/frag_e2e.rs). */
	int quote = v4 ? 20 + 8 : pkt->frag == FRAG_FIRST ? 40 + 16 : 40 + 8;
	__u32 l3 = pkt->l3_off;
	__u32 sum;

	if ((void *)(eth + 1) > data_end || l3 > 18 || l3 + quote > pkt->ip_end || data + l3 + quote > data_end)
		return drop_because(c, WEIR_STAT_DROP_TUNNEL_MTU);
	if (!icmp_allowed())
		return drop_because(c, WEIR_STAT_DROP_TUNNEL_MTU);
	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(lb_mac, eth->h_dest, ETH_ALEN);
	if (bpf_xdp_adjust_head(ctx, (int)l3 - front))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	/* The length as a scalar from the helper: pointer differences here get
	 * folded by clang into 32-bit pointer arithmetic the verifier refuses. */
	if (bpf_xdp_adjust_tail(ctx, (int)(front + quote) - (int)bpf_xdp_get_buff_len(ctx)))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if (v4) {
		struct iphdr *iph = data + ETH_HLEN;
		__u8 *icmp = data + ETH_HLEN + 20;
		__u16 len = 20 + 8 + 20 + 8;

		if ((void *)(icmp + 8 + 28) > data_end)
			return verdict(c, XDP_ABORTED);
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u16 *)iph = bpf_htons(0x4500);
		iph->tot_len = bpf_htons(len);
		iph->id = 0;
		iph->frag_off = 0;
		iph->ttl = 64;
		iph->protocol = IPPROTO_ICMP;
		iph->saddr = pkt->key.dst[0];
		iph->daddr = pkt->key.src[0];
		iph->check = csum_fold(bpf_htons(0x4500) + bpf_htons(len) + bpf_htons((64 << 8) | IPPROTO_ICMP) +
				       csum_addr(pkt->key.src, 1) + csum_addr(pkt->key.dst, 1));
		icmp[0] = ICMP_DEST_UNREACH;
		icmp[1] = ICMP_FRAG_NEEDED;
		*(__u16 *)(icmp + 2) = 0;
		*(__u16 *)(icmp + 4) = 0;
		*(__u16 *)(icmp + 6) = bpf_htons(iface_mtu - 20);
		*(__u16 *)(icmp + 2) = csum_fold(csum_words(icmp, (8 + 28) / 2));
	} else {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		__u8 *icmp = data + ETH_HLEN + 40;
		__u16 len = 8 + quote;

		if ((void *)(icmp + 8 + 48) > data_end)
			return verdict(c, XDP_ABORTED);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__u32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(len);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, pkt->key.dst, 16);
		__builtin_memcpy(&ip6->daddr, pkt->key.src, 16);
		icmp[0] = ICMPV6_PKT_TOOBIG;
		icmp[1] = 0;
		*(__u16 *)(icmp + 2) = 0;
		*(__u32 *)(icmp + 4) = bpf_htonl(iface_mtu - 40);
		sum = csum_addr(pkt->key.src, 0) + csum_addr(pkt->key.dst, 0) + bpf_htons(len) + bpf_htons(IPPROTO_ICMPV6);
		sum += csum_words(icmp, (8 + 48) / 2);
		if (quote > 48) {
			if ((void *)(icmp + 8 + 56) > data_end)
				return verdict(c, XDP_ABORTED);
			sum += csum_words(icmp + 8 + 48, 8 / 2);
		}
		*(__u16 *)(icmp + 2) = csum_fold(sum);
	}
	__builtin_memcpy(eth->h_dest, client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, lb_mac, ETH_ALEN);
	/* Back on the VLAN the client's frame came by. */
	if (pkt->tci & VLAN_VID_MASK) {
		if (vlan_set(ctx, 0, pkt->tci & VLAN_VID_MASK, pkt->tci))
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
	}
	stat_inc(c, WEIR_STAT_ICMP_TOO_BIG);
	return verdict(c, XDP_TX);
}

static __always_inline int tunnel_encap(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt,
					const struct vip_meta *vip, const struct backend *be)
{
	void *data, *data_end;
	int v4 = pkt->key.family == WEIR_FAMILY_V4;
	__u32 l3 = pkt->l3_off;
	int outer = v4 ? 20 : 40;
	__u32 inner_len, word0 = 0;
	__u16 df = 0;
	__u8 tos = 0;

	if (l3 > 18 || pkt->ip_end <= l3 || pkt->ip_end > 0xffff + 18)
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	/*
	 * The inner packet is the datagram, as long as its header says and the
	 * parser checked against the frame: never a length field alone, never
	 * the padding after it.
	 */
	inner_len = pkt->ip_end - l3;
	if (inner_len + outer > iface_mtu) {
		/* IPv4 without DF may be fragmented by routers, not by us. */
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (v4) {
			struct iphdr *iph = data + l3;

			if ((void *)(iph + 1) > data_end)
				return drop_because(c, WEIR_STAT_DROP_ENCAP);
			df = iph->frag_off & bpf_htons(0x4000);
		}
		if ((vip->flags & WEIR_VIP_ICMP_TOO_BIG) && (!v4 || df) && !pkt->ip_opts)
			return send_too_big(c, ctx, pkt);
		return drop_because(c, WEIR_STAT_DROP_TUNNEL_MTU);
	}
	if (trim_to_ip(ctx, pkt))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (v4) {
		struct iphdr *iph = data + l3;

		if ((void *)(iph + 1) > data_end)
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
		tos = iph->tos;
		df = iph->frag_off & bpf_htons(0x4000);
	} else {
		struct ipv6hdr *ip6 = data + l3;

		if ((void *)(ip6 + 1) > data_end)
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
		word0 = bpf_ntohl(*(__u32 *)ip6);
	}
	/* Ethernet (+ tag) becomes Ethernet + outer header. */
	if (bpf_xdp_adjust_head(ctx, (int)l3 - (ETH_HLEN + outer)))
		return drop_because(c, WEIR_STAT_DROP_ENCAP);
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (v4) {
		struct ethhdr *eth = data;
		struct iphdr *iph = data + ETH_HLEN;
		__u16 len = inner_len + 20;

		if ((void *)(iph + 1) > data_end)
			return verdict(c, XDP_ABORTED);
		eth->h_proto = bpf_htons(ETH_P_IP);
		*(__u16 *)iph = bpf_htons(0x4500 | tos);
		iph->tot_len = bpf_htons(len);
		iph->id = 0;
		iph->frag_off = df;
		iph->ttl = 64;
		iph->protocol = IPPROTO_IPIP;
		iph->saddr = vip->source[0];
		iph->daddr = be->addr[0];
		iph->check = csum_fold(bpf_htons(0x4500 | tos) + bpf_htons(len) + df +
				       bpf_htons((64 << 8) | IPPROTO_IPIP) + csum_addr(vip->source, 1) +
				       csum_addr(be->addr, 1));
	} else {
		struct ethhdr *eth = data;
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		if ((void *)(ip6 + 1) > data_end)
			return verdict(c, XDP_ABORTED);
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		/* version 6, the inner traffic class, flow label 0 */
		*(__u32 *)ip6 = bpf_htonl(0x60000000 | (word0 & 0x0ff00000));
		ip6->payload_len = bpf_htons(inner_len);
		ip6->nexthdr = IPPROTO_IPV6;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, vip->source, 16);
		__builtin_memcpy(&ip6->daddr, be->addr, 16);
	}
	/* The outer frame carries the backend's (next hop's) tag, with the
	 * client frame's priority. */
	if (be->vlan) {
		if (vlan_set(ctx, 0, be->vlan, pkt->tci))
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + ETH_HLEN > data_end)
			return verdict(c, XDP_ABORTED);
	}
	return send_to_backend(c, data, be);
}

#endif
