/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The DSR / tunnel flow tables (maps.h): IPv4 flows under a 16-byte key
 * (flows4, syn_flows4), IPv6 under the whole flow_key (flows6, syn_flows6).
 * Every lookup and insert of a tracked flow goes through here.
 */
#ifndef WEIR_FLOWS_H
#define WEIR_FLOWS_H

#include "weir.h"
#include "maps.h"

static __always_inline void flow4_key_of(struct flow4_key *k4, const struct flow_key *k)
{
	k4->src = k->src[0];
	k4->dst = k->dst[0];
	k4->sport = k->sport;
	k4->dport = k->dport;
	k4->proto = k->proto;
	k4->pad[0] = 0;
	k4->pad[1] = 0;
	k4->pad[2] = 0;
}

/* The established flow of `k`, or NULL. */
static __always_inline struct flow *flow_find(const struct flow_key *k)
{
	if (k->family == WEIR_FAMILY_V4) {
		struct flow4_key k4;

		flow4_key_of(&k4, k);
		return bpf_map_lookup_elem(&flows4, &k4);
	}
	return bpf_map_lookup_elem(&flows6, k);
}

/* A TCP handshake in progress for `k`, or NULL. */
static __always_inline struct flow *handshake_find(const struct flow_key *k)
{
	if (k->family == WEIR_FAMILY_V4) {
		struct flow4_key k4;

		flow4_key_of(&k4, k);
		return bpf_map_lookup_elem(&syn_flows4, &k4);
	}
	return bpf_map_lookup_elem(&syn_flows6, k);
}

/* Track `k` as established, or (handshake) as a SYN awaiting its ACK. */
static __always_inline void flow_store(const struct flow_key *k, const struct flow *f, int handshake)
{
	if (k->family == WEIR_FAMILY_V4) {
		struct flow4_key k4;

		flow4_key_of(&k4, k);
		bpf_map_update_elem(handshake ? (void *)&syn_flows4 : (void *)&flows4, &k4, f, BPF_ANY);
		return;
	}
	bpf_map_update_elem(handshake ? (void *)&syn_flows6 : (void *)&flows6, k, f, BPF_ANY);
}

#endif
