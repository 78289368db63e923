/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Header parsing. Every access is bounds-checked against data_end before it
 * is read. A parser returns 0 when the packet can be balanced, otherwise the
 * weir_stat reason for handing it to the kernel.
 */
#ifndef WEIR_PARSE_H
#define WEIR_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include "weir.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define IP_MF 0x2000
#define IP_OFFSET 0x1FFF

/* ICMP / ICMPv6 message types weir reads or writes (RFC 792, RFC 4443). */
#define ICMP_DEST_UNREACH 3
#define ICMP_FRAG_NEEDED 4 /* code of ICMP_DEST_UNREACH */
#define ICMP_TIME_EXCEEDED 11
#define ICMPV6_DEST_UNREACH 1
#define ICMPV6_PKT_TOOBIG 2
#define ICMPV6_TIME_EXCEED 3

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* <linux/if_arp.h> pulls in libc headers that do not build for BPF. */
struct arp_eth {
	__be16 hw_type;
	__be16 proto_type;
	__u8 hw_len;
	__u8 proto_len;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__be32 spa;
	__u8 tha[ETH_ALEN];
	__be32 tpa;
} __attribute__((packed));

struct packet {
	struct flow_key key;
	__u32 l3_off; /* after Ethernet and an optional 802.1Q tag */
	__u32 l4_off;
	__be16 l3_proto;
	__u8 tcp_flags; /* byte 13 of the TCP header */
	__u8 ip_opts;   /* IPv4 header longer than 20 bytes */
	__be32 tcp_seq;
	__be32 tcp_ack;
	/*
	 * Where the IP datagram ends, as its header says (checked to lie
	 * within the frame). Bytes after it are Ethernet padding: a rewrite
	 * trims them (trim_to_ip) so that nothing past the datagram is sent
	 * on as if it were part of it.
	 */
	__u32 ip_end;
	/* A fragment (frag.h): FRAG_FIRST carries the transport header,
	 * FRAG_LATER does not. frag_id as it is in the header. */
	__u8 frag;
	__u32 frag_id;
	/* The 802.1Q / 802.1ad tag's TCI (host order), 0 when untagged;
	 * its low 12 bits are the VLAN id the frame arrived on. */
	__u16 tci;
	__u8 tagged;
	__u8 pad;
};

/* maps.h (lb.bpf.c) sets frag_on before load; a program without it (the
 * standalone shield) hands every fragment to the kernel. */
#ifndef WEIR_MAPS_H
#define frag_on 0
#endif

#define FRAG_NONE 0
#define FRAG_FIRST 1
#define FRAG_LATER 2

#define VLAN_VID_MASK 0x0fff

/* Whether a frame on its VLAN may be answered for an address whose
 * vip_arp / vip_nd value is `v` (weir.h, WEIR_NEIGH_VLAN_SHIFT). */
static __always_inline int neigh_vlan_ok(__u32 v, const struct packet *pkt)
{
	return (v & WEIR_NEIGH_ANY_VLAN) ||
	       ((v >> WEIR_NEIGH_VLAN_SHIFT) & VLAN_VID_MASK) == (pkt->tci & VLAN_VID_MASK);
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* Ethernet plus at most one 802.1Q / 802.1ad tag. */
static __always_inline int parse_eth(void *data, void *data_end, struct packet *pkt)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	proto = eth->h_proto;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_hdr *vh = data + off;

		if ((void *)(vh + 1) > data_end)
			return WEIR_STAT_PASS_TRUNCATED;
		proto = vh->encap_proto;
		pkt->tci = bpf_ntohs(vh->tci);
		pkt->tagged = 1;
		off += sizeof(*vh);
	}
	pkt->l3_off = off;
	pkt->l3_proto = proto;
	return 0;
}

/*
 * `l4` .. `ip_end` is the transport segment the IP header claims; it was
 * checked to lie within the frame. A header that does not fit in it lies.
 */
static __always_inline int parse_l4(void *l4, void *ip_end, void *data_end, struct packet *pkt)
{
	if (pkt->key.proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;

		if ((void *)(th + 1) > data_end)
			return WEIR_STAT_PASS_TRUNCATED;
		if ((void *)(th + 1) > ip_end || th->doff < 5 || l4 + th->doff * 4 > ip_end)
			return WEIR_STAT_PASS_MALFORMED;
		pkt->key.sport = th->source;
		pkt->key.dport = th->dest;
		pkt->tcp_flags = ((__u8 *)th)[13];
		pkt->tcp_seq = th->seq;
		pkt->tcp_ack = th->ack_seq;
		return 0;
	}
	if (pkt->key.proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;

		if ((void *)(uh + 1) > data_end)
			return WEIR_STAT_PASS_TRUNCATED;
		/* Shorter than its IP payload is allowed (the rest is not UDP);
		 * longer, or shorter than its own header, is a lie. A first
		 * fragment's UDP length counts the whole datagram: it must only
		 * be longer than the fragment. */
		if ((void *)(uh + 1) > ip_end || bpf_ntohs(uh->len) < sizeof(*uh) ||
		    (pkt->frag ? l4 + bpf_ntohs(uh->len) <= ip_end : l4 + bpf_ntohs(uh->len) > ip_end))
			return WEIR_STAT_PASS_MALFORMED;
		pkt->key.sport = uh->source;
		pkt->key.dport = uh->dest;
		return 0;
	}
	return WEIR_STAT_PASS_UNKNOWN_PROTO;
}

static __always_inline int parse_ipv4(void *data, void *data_end, struct packet *pkt)
{
	struct iphdr *iph = data + pkt->l3_off;
	__u32 ihl_len, tot;

	if ((void *)(iph + 1) > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	if (iph->version != 4 || iph->ihl < 5)
		return WEIR_STAT_PASS_MALFORMED;
	/*
	 * Without [fragments], every fragment, the first included, goes to the
	 * kernel: later fragments carry no ports, so balancing the first alone
	 * would split one datagram between two hosts. With it, frag.h keeps
	 * each datagram on one backend.
	 */
	if (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		if (!frag_on)
			return WEIR_STAT_PASS_FRAGMENT;
		pkt->frag = iph->frag_off & bpf_htons(IP_OFFSET) ? FRAG_LATER : FRAG_FIRST;
		pkt->frag_id = iph->id;
	}
	ihl_len = iph->ihl * 4;
	if ((void *)iph + ihl_len > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	/* The total length is believed only within the frame: a datagram
	 * that claims more bytes than arrived (truncated), or fewer than its
	 * own header (malformed), is the kernel's to drop, never ours to
	 * forward or rewrite. */
	tot = bpf_ntohs(iph->tot_len);
	if (tot < ihl_len)
		return WEIR_STAT_PASS_MALFORMED;
	if ((void *)iph + tot > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	pkt->ip_end = pkt->l3_off + tot;
	/* Filled for ICMP too: NAT translates errors about its flows. */
	pkt->key.family = WEIR_FAMILY_V4;
	pkt->key.proto = iph->protocol;
	pkt->key.src[0] = iph->saddr;
	pkt->key.dst[0] = iph->daddr;
	pkt->l4_off = pkt->l3_off + ihl_len;
	pkt->ip_opts = ihl_len > 20;
	if (pkt->frag == FRAG_LATER)
		return WEIR_STAT_PASS_FRAGMENT;
	if (iph->protocol != IPPROTO_TCP && iph->protocol != IPPROTO_UDP)
		return pkt->frag ? WEIR_STAT_PASS_FRAGMENT : WEIR_STAT_PASS_UNKNOWN_PROTO;
	return parse_l4((void *)iph + ihl_len, (void *)iph + tot, data_end, pkt);
}

static __always_inline int is_ipv6_ext(__u8 nexthdr)
{
	switch (nexthdr) {
	case IPPROTO_HOPOPTS:
	case IPPROTO_ROUTING:
	case IPPROTO_FRAGMENT:
	case IPPROTO_DSTOPTS:
	case IPPROTO_AH:
	case IPPROTO_ESP:
	case 135: /* mobility */
	case 139: /* HIP */
	case 140: /* shim6 */
		return 1;
	}
	return 0;
}

/* The IPv6 Fragment header (RFC 8200 4.5). */
struct frag6_hdr {
	__u8 nexthdr;
	__u8 reserved;
	__be16 frag_off; /* offset << 3 | M */
	__be32 id;
};

static __always_inline int parse_ipv6(void *data, void *data_end, struct packet *pkt)
{
	struct ipv6hdr *ip6 = data + pkt->l3_off;
	void *l4 = ip6 + 1;
	__u32 plen;
	__u8 nh;

	if ((void *)(ip6 + 1) > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	if (ip6->version != 6)
		return WEIR_STAT_PASS_MALFORMED;
	/* As for IPv4: the payload length is believed only within the frame
	 * (0 would be a jumbogram, which no XDP frame carries). */
	plen = bpf_ntohs(ip6->payload_len);
	if ((void *)(ip6 + 1) + plen > data_end)
		return WEIR_STAT_PASS_TRUNCATED;
	pkt->ip_end = pkt->l3_off + sizeof(*ip6) + plen;
	nh = ip6->nexthdr;
	/*
	 * A Fragment header right after the fixed header (where senders put
	 * it; one behind other extension headers goes to the kernel, as every
	 * extension header does). Offset 0 without M is an atomic fragment: a
	 * whole datagram (RFC 6946).
	 */
	if (nh == IPPROTO_FRAGMENT && frag_on) {
		struct frag6_hdr *fh = l4;
		__u16 off;

		if ((void *)(fh + 1) > data_end)
			return WEIR_STAT_PASS_TRUNCATED;
		if (plen < sizeof(*fh))
			return WEIR_STAT_PASS_MALFORMED;
		off = bpf_ntohs(fh->frag_off);
		if (off & 6)
			return WEIR_STAT_PASS_MALFORMED; /* reserved bits */
		if (off & 0xfff9) {
			pkt->frag = off & 0xfff8 ? FRAG_LATER : FRAG_FIRST;
			pkt->frag_id = fh->id;
		}
		nh = fh->nexthdr;
		l4 = fh + 1;
	}
	if (is_ipv6_ext(nh))
		return WEIR_STAT_PASS_IPV6_EXT;
	pkt->key.family = WEIR_FAMILY_V6;
	pkt->key.proto = nh;
	__builtin_memcpy(pkt->key.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->key.dst, &ip6->daddr, 16);
	pkt->l4_off = pkt->l3_off + (l4 - (void *)ip6);
	if (pkt->frag == FRAG_LATER)
		return WEIR_STAT_PASS_FRAGMENT;
	if (nh != IPPROTO_TCP && nh != IPPROTO_UDP)
		return pkt->frag ? WEIR_STAT_PASS_FRAGMENT : WEIR_STAT_PASS_UNKNOWN_PROTO;
	return parse_l4(l4, (void *)(ip6 + 1) + plen, data_end, pkt);
}

#endif
