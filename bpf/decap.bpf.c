// SPDX-License-Identifier: GPL-2.0
/*
 * Backend side of tunnel mode (`weir decap`): strip an outer IPv4 (protocol
 * 4 or 41) or IPv6 (next header 41 or 4) header and hand the inner packet
 * to the stack, as an ipip / ip6tnl device would (kernels built without
 * those drivers have no other way). Katran's decap program does the same
 * for its backends.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* The host's own addresses (`weir decap` fills them from the interface):
 * only tunnels addressed to the host are opened, never transit traffic. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, __u8);
	__uint(max_entries, 64);
} decap_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6_addr);
	__type(value, __u8);
	__uint(max_entries, 64);
} decap_v6 SEC(".maps");

static __always_inline int decap(struct xdp_md *ctx, int outer, int inner_v6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr eth, *e = data;

	if ((void *)(e + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(&eth, e, sizeof(eth));
	eth.h_proto = inner_v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
	if (bpf_xdp_adjust_head(ctx, outer))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	e = data;
	if ((void *)(e + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(e, &eth, sizeof(eth));
	return XDP_PASS;
}

SEC("xdp")
int xdp_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);

		if ((void *)(iph + 1) > data_end || iph->ihl != 5 || (iph->frag_off & bpf_htons(0x3fff)))
			return XDP_PASS;
		if ((iph->protocol == IPPROTO_IPIP || iph->protocol == IPPROTO_IPV6) &&
		    !bpf_map_lookup_elem(&decap_v4, &iph->daddr))
			return XDP_PASS;
		if (iph->protocol == IPPROTO_IPIP)
			return decap(ctx, sizeof(*iph), 0);
		if (iph->protocol == IPPROTO_IPV6)
			return decap(ctx, sizeof(*iph), 1);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_PASS;
		if ((ip6->nexthdr == IPPROTO_IPV6 || ip6->nexthdr == IPPROTO_IPIP) &&
		    !bpf_map_lookup_elem(&decap_v6, &ip6->daddr))
			return XDP_PASS;
		if (ip6->nexthdr == IPPROTO_IPV6)
			return decap(ctx, sizeof(*ip6), 1);
		if (ip6->nexthdr == IPPROTO_IPIP)
			return decap(ctx, sizeof(*ip6), 0);
	}
	return XDP_PASS;
}
