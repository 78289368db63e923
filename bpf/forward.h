/* SPDX-License-Identifier: GPL-2.0 */
/* Sending toward a backend; L2 direct server return only changes the MACs. */
#ifndef WEIR_FORWARD_H
#define WEIR_FORWARD_H

#include "maps.h"
#include "stats.h"
#include "parse.h"

/*
 * Cut what follows the IP datagram (Ethernet padding of a short frame, or
 * bytes a sender appended) before the frame is re-wrapped: an outer header's
 * length must count exactly the bytes that follow it. 0, or -1 when the
 * frame could not be shrunk.
 */
static __always_inline int trim_to_ip(struct xdp_md *ctx, const struct packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 end = pkt->ip_end;

	if (end > 0xffff + 18 + 40)
		return -1;
	if (data + end >= data_end)
		return 0;
	/* The length as a scalar from the helper (see send_too_big). */
	return bpf_xdp_adjust_tail(ctx, (int)end - (int)bpf_xdp_get_buff_len(ctx)) ? -1 : 0;
}

/* The frame's MACs say where it goes; out the same interface, or another. */
static __always_inline int send_to_backend(struct stat_block *c, void *data, const struct backend *be)
{
	struct ethhdr *eth = data; /* bounds checked by the caller */
	int action;

	__builtin_memcpy(eth->h_dest, be->mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	if (be->tx_port == 0)
		return verdict(c, XDP_TX);
	/* An empty DEVMAP slot yields the low bits of flags: XDP_DROP. */
	action = bpf_redirect_map(&tx_ports, be->tx_port, XDP_DROP);
	if (action != XDP_REDIRECT)
		return drop_because(c, WEIR_STAT_DROP_TX_PORT);
	return verdict(c, action);
}

#endif
