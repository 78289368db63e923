/* SPDX-License-Identifier: GPL-2.0 */
/* Per-CPU counters: no atomics, no contention on the hot path. */
#ifndef WEIR_STATS_H
#define WEIR_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"
#include "trace.h"

/* Global counters: one block per CPU (see counters()). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct stat_block);
	__uint(max_entries, 1);
} stats SEC(".maps");

/* One lookup per packet: the whole per-CPU block, then plain increments. */
static __always_inline struct stat_block *counters(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&stats, &zero);
}

static __always_inline void stat_inc(struct stat_block *c, __u32 idx)
{
	if (c && idx < WEIR_STAT_MAX)
		c->n[idx] += 1;
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
static __always_inline int verdict(struct stat_block *c, int action)
{
	stat_inc(c, (__u32)action);
	return action;
}

static __always_inline int pass_because(struct stat_block *c, __u32 reason)
{
	stat_inc(c, reason);
	trace_note_reason(reason);
	return verdict(c, XDP_PASS);
}

static __always_inline int drop_because(struct stat_block *c, __u32 reason)
{
	stat_inc(c, reason);
	trace_note_reason(reason);
	return verdict(c, XDP_DROP);
}

#endif
