/* SPDX-License-Identifier: GPL-2.0 */
/* The VIP of a tuple, and backend selection for a new flow: Maglev,
 * round-robin or source hash. */
#ifndef WEIR_SCHED_H
#define WEIR_SCHED_H

#include "jhash.h"
#include "maps.h"

/*
 * The flow hash. tests/common keeps an independent copy to predict the
 * backend of each fixture: change both together.
 */
static __always_inline __u32 flow_hash(const struct flow_key *k)
{
	__u32 ports = ((__u32)k->sport << 16) | k->dport;
	__u32 h;

	if (k->family == WEIR_FAMILY_V4)
		return jhash_3words(k->src[0], k->dst[0], ports, WEIR_HASH_SEED ^ k->proto);
	h = jhash_3words(k->src[0], k->src[1], k->src[2], WEIR_HASH_SEED ^ k->proto);
	return jhash_3words(k->src[3], k->dst[0] ^ k->dst[1] ^ k->dst[2] ^ k->dst[3], ports, h);
}

static __always_inline __u32 source_hash(const struct flow_key *k)
{
	__u32 h;

	if (k->family == WEIR_FAMILY_V4)
		return jhash_1word(k->src[0], WEIR_HASH_SEED);
	h = jhash_3words(k->src[0], k->src[1], k->src[2], WEIR_HASH_SEED);
	return jhash_1word(k->src[3], h);
}

static __always_inline __u32 ring_pick(const struct vip_meta *vip, __u32 hash)
{
	__u32 idx = (vip->vip_id * 2 + (vip->half & 1)) * ring_size + hash % ring_size;
	__u32 *bid = bpf_map_lookup_elem(&maglev_ring, &idx);

	return bid ? *bid : WEIR_NO_BACKEND;
}

static __always_inline __u32 round_robin_pick(const struct vip_meta *vip)
{
	__u32 vid = vip->vip_id, idx, n;
	__u32 *cursor = bpf_map_lookup_elem(&rr_cursor, &vid);
	__u32 *bid;

	if (!cursor || vip->rr_len == 0)
		return WEIR_NO_BACKEND;
	/* When the u32 cursor wraps (every 2^32 new flows) the rotation
	 * restarts once mid-sequence: one uneven turn, then exact again. */
	n = __sync_fetch_and_add(cursor, 1);
	idx = (vid * 2 + (vip->half & 1)) * WEIR_RR_SLOTS + n % vip->rr_len;
	bid = bpf_map_lookup_elem(&rr_ring, &idx);
	return bid ? *bid : WEIR_NO_BACKEND;
}

/*
 * The filter bit of a destination address (maps.h addr_filter); the
 * control plane computes the same (src/dataplane/filter.rs): a
 * multiplicative hash of the address's words as they are in the packet.
 */
static __always_inline __u32 addr_filter_bit(const __u32 *a)
{
	__u32 x = a[0] ^ a[1] ^ a[2] ^ a[3]; /* IPv4: a[1..3] are zero */

	return (x * 0x9E3779B1u) >> 16;
}

/* Is the filter bit of the packet's destination set in half `half`
 * (0: a VIP, a NAT source or the probe's; 1: a DSR VIP's)? */
static __always_inline int addr_filter_has(const struct flow_key *k, __u32 half)
{
	__u32 bit = addr_filter_bit(k->dst);
	__u32 w = (bit >> 6) + half * WEIR_ADDR_FILTER_WORDS;
	__u64 *word = bpf_map_lookup_elem(&addr_filter, &w);

	return word && ((*word >> (bit & 63)) & 1);
}

/* The VIP of a client's tuple: its port, else the address's port 0. */
static __always_inline struct vip_meta *find_vip(const struct flow_key *k)
{
	struct vip_key vk = {};
	struct vip_meta *vip;

	__builtin_memcpy(vk.addr, k->dst, sizeof(vk.addr));
	vk.port = k->dport;
	vk.proto = k->proto;
	vk.family = k->family;
	vip = bpf_map_lookup_elem(&vips, &vk);
	if (vip)
		return vip;
	vk.port = 0;
	return bpf_map_lookup_elem(&vips, &vk);
}

static __always_inline __u32 schedule(const struct vip_meta *vip, const struct flow_key *k)
{
	switch (vip->sched) {
	case WEIR_SCHED_ROUND_ROBIN:
		return round_robin_pick(vip);
	case WEIR_SCHED_SOURCE_HASH:
		return ring_pick(vip, source_hash(k));
	default:
		return ring_pick(vip, flow_hash(k));
	}
}

#endif
