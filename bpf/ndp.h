/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Neighbour discovery for IPv6 VIPs (RFC 4861), the IPv6 twin of arp.h: a
 * neighbour solicitation for a VIP is turned into the advertisement in its
 * own frame (same size: NS with a source link-layer option, NA with a target
 * link-layer option) and sent back with XDP_TX. DSR backends keep the VIP on
 * lo, where Linux does not answer solicitations received on another device.
 */
#ifndef WEIR_NDP_H
#define WEIR_NDP_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "csum.h"

#define ICMPV6_NS 135
#define ICMPV6_NA 136

struct nd_msg {
	__u8 type;
	__u8 code;
	__be16 cksum;
	__be32 flags;
	__u32 target[4];
	__u8 opt_type;
	__u8 opt_len; /* in 8-byte units */
	__u8 opt_mac[ETH_ALEN];
} __attribute__((packed));

/* The XDP action, or -1: not a solicitation for one of our VIPs. */
static __always_inline int handle_ndp(struct stat_block *c, void *data, void *data_end, struct packet *pkt)
{
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = data + pkt->l3_off;
	struct nd_msg *nd;
	struct in6_key target;
	__u32 src[4], sum, *flags;
	__u8 mac[ETH_ALEN];
	int i;

	if ((void *)(eth + 1) > data_end || (void *)(ip6 + 1) > data_end || ip6->version != 6 ||
	    ip6->nexthdr != IPPROTO_ICMPV6)
		return -1;
	nd = (void *)(ip6 + 1);
	if ((void *)(nd + 1) > data_end)
		return -1;
	/* Exactly an NS with one source link-layer option, from a real source
	 * (not duplicate address detection) and not forwarded (hop limit 255). */
	if (nd->type != ICMPV6_NS || nd->code != 0 || ip6->hop_limit != 255 ||
	    ip6->payload_len != bpf_htons(sizeof(*nd)) || nd->opt_type != 1 || nd->opt_len != 1)
		return -1;
	__builtin_memcpy(src, &ip6->saddr, sizeof(src));
	if (!(src[0] | src[1] | src[2] | src[3]))
		return -1;
	__builtin_memcpy(target.addr, nd->target, sizeof(target.addr));
	flags = bpf_map_lookup_elem(&vip_nd, &target);
	if (!flags || (*flags & WEIR_VIP_NO_NEIGH))
		return -1;
	/* Only on the address's VLAN; the advertisement keeps the tag. */
	if (!neigh_vlan_ok(*flags, pkt))
		return pass_because(c, WEIR_STAT_PASS_VLAN);

	/* Element-wise: a memcpy from the const volatile would be folded to zeros. */
	for (i = 0; i < ETH_ALEN; i++)
		mac[i] = iface_mac[i];
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	__builtin_memcpy(&ip6->daddr, src, sizeof(src));
	__builtin_memcpy(&ip6->saddr, target.addr, sizeof(target.addr));
	ip6->hop_limit = 255;
	nd->type = ICMPV6_NA;
	nd->flags = bpf_htonl(0x60000000); /* solicited, override */
	nd->opt_type = 2;                   /* target link-layer address */
	__builtin_memcpy(nd->opt_mac, mac, ETH_ALEN);
	nd->cksum = 0;
	/* Pseudo-header from the local copies (both addresses, length, 58). */
	sum = bpf_htons(sizeof(*nd)) + bpf_htons(IPPROTO_ICMPV6);
#pragma unroll
	for (i = 0; i < 4; i++) {
		sum += (src[i] & 0xffff) + (src[i] >> 16);
		sum += (target.addr[i] & 0xffff) + (target.addr[i] >> 16);
	}
	sum += csum_words(nd, sizeof(*nd) / 2);
	nd->cksum = csum_fold(sum);
	stat_inc(c, WEIR_STAT_NDP_REPLY);
	return verdict(c, XDP_TX);
}

#endif
