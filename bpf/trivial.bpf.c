// SPDX-License-Identifier: GPL-2.0
/*
 * Baselines and helpers: XDP_PASS (also the stub a veth peer needs so that
 * XDP_TX frames reach it: on veth, a native-mode XDP_TX frame is delivered
 * only if the peer has a native XDP program, else it is silently lost),
 * XDP_DROP, and a MAC-swapping XDP_TX reflector. `weir bench` times weir
 * against these in the same run. The backends' decapsulator is decap.bpf.c.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

SEC("xdp")
int xdp_reflect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}
