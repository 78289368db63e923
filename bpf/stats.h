/* SPDX-License-Identifier: GPL-2.0 */
/* Per-CPU counters: no atomics, no contention on the hot path. */
#ifndef WEIR_STATS_H
#define WEIR_STATS_H

#include "maps.h"

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		*v += 1;
}

static __always_inline void traffic_add(void *map, __u32 idx, __u64 bytes, int new_flow)
{
	struct traffic *t = bpf_map_lookup_elem(map, &idx);

	if (!t)
		return;
	t->packets += 1;
	t->bytes += bytes;
	t->new_flows += new_flow;
}

/* Every exit goes through here so the action counters add up to the packets seen. */
static __always_inline int verdict(int action)
{
	stat_inc((__u32)action);
	return action;
}

static __always_inline int pass_because(__u32 reason)
{
	stat_inc(reason);
	return verdict(XDP_PASS);
}

static __always_inline int drop_because(__u32 reason)
{
	stat_inc(reason);
	return verdict(XDP_DROP);
}

#endif
