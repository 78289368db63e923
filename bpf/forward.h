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

/*
 * Give the frame at ctx the 802.1Q tag of VLAN `vid` (0: no tag). `tagged`:
 * the frame carries one tag now (right after the MACs). A tag kept has its
 * VLAN id rewritten (its TPID, priority and DEI stay); a tag pushed is
 * 802.1Q with the priority and DEI of `keep` (a TCI, 0 if none); a tag
 * popped is removed with what it said. 0, or -1 when the frame could not
 * be grown or shrunk. The frame's pointers are stale afterwards: re-read
 * them from ctx (the IP header moved by 4 bytes if a tag came or went).
 */
static __always_inline int vlan_set(struct xdp_md *ctx, int tagged, __u16 vid, __u16 keep)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 macs[2 * ETH_ALEN];

	if (tagged && vid) {
		struct vlan_hdr *vh = data + ETH_HLEN;

		if ((void *)(vh + 1) > data_end)
			return -1;
		vh->tci = bpf_htons((bpf_ntohs(vh->tci) & ~VLAN_VID_MASK) | (vid & VLAN_VID_MASK));
		return 0;
	}
	if (tagged) {
		/* Pop: the MACs move 4 bytes on, over the tag; the tag's
		 * encapsulated type becomes the frame's. */
		if (data + ETH_HLEN + sizeof(struct vlan_hdr) > data_end)
			return -1;
		__builtin_memcpy(macs, data, sizeof(macs));
		if (bpf_xdp_adjust_head(ctx, (int)sizeof(struct vlan_hdr)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + ETH_HLEN > data_end)
			return -1;
		__builtin_memcpy(data, macs, sizeof(macs));
		return 0;
	}
	if (vid) {
		/* Push: the MACs move 4 bytes back; the frame's type stays where
		 * it is and becomes the tag's encapsulated type. */
		__be16 *tag; /* TPID, TCI, then the type the frame had */

		if (data + ETH_HLEN > data_end)
			return -1;
		__builtin_memcpy(macs, data, sizeof(macs));
		if (bpf_xdp_adjust_head(ctx, -(int)sizeof(struct vlan_hdr)))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		tag = data + 2 * ETH_ALEN;
		if ((void *)(tag + 3) > data_end)
			return -1;
		__builtin_memcpy(data, macs, sizeof(macs));
		tag[0] = bpf_htons(ETH_P_8021Q);
		tag[1] = bpf_htons((keep & ~VLAN_VID_MASK) | (vid & VLAN_VID_MASK));
		return 0;
	}
	return 0;
}

/*
 * send_to_backend with the backend's VLAN tag. The tag test is the only
 * cost for frames on a segment without VLANs (untagged, backend without
 * vlan).
 */
static __always_inline int send_tagged(struct stat_block *c, struct xdp_md *ctx, const struct packet *pkt,
				       const struct backend *be)
{
	void *data, *data_end;

	if (pkt->tagged | be->vlan) {
		if (vlan_set(ctx, pkt->tagged, be->vlan, pkt->tci))
			return drop_because(c, WEIR_STAT_DROP_ENCAP);
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + ETH_HLEN > data_end)
		return verdict(c, XDP_ABORTED);
	return send_to_backend(c, data, be);
}

#endif
