/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ARP responder for IPv4 VIPs: in L2 DSR the VIP lives on the backends' lo
 * (arp_ignore=1), so nobody else may answer for it on this segment. The reply
 * is built in the request's own frame (bpf_xdp_adjust_tail cannot grow an
 * skb-backed veth frame) and sent back with XDP_TX.
 */
#ifndef WEIR_ARP_H
#define WEIR_ARP_H

#include "maps.h"
#include "parse.h"
#include "stats.h"

#define ARPOP_REQUEST 1
#define ARPOP_REPLY 2

static __always_inline int handle_arp(struct stat_block *c, void *data, void *data_end, struct packet *pkt)
{
	struct ethhdr *eth = data;
	struct arp_eth *arp = data + pkt->l3_off;
	__be32 target;
	__u32 *flags;

	if ((void *)(arp + 1) > data_end)
		return pass_because(c, WEIR_STAT_PASS_TRUNCATED);
	if (arp->hw_type != bpf_htons(1) || arp->proto_type != bpf_htons(ETH_P_IP) ||
	    arp->hw_len != ETH_ALEN || arp->proto_len != 4 || arp->op != bpf_htons(ARPOP_REQUEST))
		return pass_because(c, WEIR_STAT_PASS_ARP_OTHER);
	__u8 mac[ETH_ALEN];
	int i;

	/* Element-wise: a memcpy from the const volatile would be folded to zeros. */
	for (i = 0; i < ETH_ALEN; i++)
		mac[i] = iface_mac[i];
	target = arp->tpa;
	flags = bpf_map_lookup_elem(&vip_arp, &target);
	if (!flags)
		return pass_because(c, WEIR_STAT_PASS_ARP_OTHER);
	/* Only on the address's VLAN; the reply keeps the request's tag. */
	if (!neigh_vlan_ok(*flags, pkt))
		return pass_because(c, WEIR_STAT_PASS_VLAN);
	if (*flags & WEIR_VIP_NO_NEIGH) {
		stat_inc(c, WEIR_STAT_DROP_ARP_QUIET);
		return verdict(c, XDP_DROP);
	}

	arp->op = bpf_htons(ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	arp->tpa = arp->spa;
	__builtin_memcpy(arp->sha, mac, ETH_ALEN);
	arp->spa = target;
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);
	stat_inc(c, WEIR_STAT_ARP_REPLY);
	return verdict(c, XDP_TX);
}

#endif
