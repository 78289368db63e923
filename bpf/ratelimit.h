/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GCRA budgets. For what the data plane sends on its own (ICMP too-big
 * answers): one per CPU, so no CPU ever writes a line another CPU reads. The
 * kernel's own limit is global (net.ipv4.icmp_msgs_per_sec = 1000, burst
 * 50); this one is per CPU, the same numbers, so a flood of packets that
 * claim a spoofed source cannot make weir a reflector.
 */
#ifndef WEIR_RATELIMIT_H
#define WEIR_RATELIMIT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"

#define ICMP_INTERVAL_NS 1000000ULL        /* 1000 per second ... */
#define ICMP_BURST_NS (50 * ICMP_INTERVAL_NS) /* ... and a burst of 50 */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64); /* theoretical arrival time */
	__uint(max_entries, 1);
} icmp_budget SEC(".maps");

/* GCRA on one per-CPU slot: true when one more may be sent now. */
static __always_inline int gcra_take(__u64 *tat, __u64 now, __u64 interval, __u64 burst)
{
	__u64 t = *tat > now ? *tat : now;

	if (t - now + interval > burst)
		return 0;
	*tat = t + interval;
	return 1;
}

/*
 * The same on a slot other CPUs update too (a source's bucket): the new
 * arrival time is written by compare-and-swap, so two CPUs never both spend
 * the last token (a plain read-modify-write let up to N_CPU through). One
 * retry, then the packet counts as over budget.
 */
static __always_inline int gcra_take_shared(__u64 *tat, __u64 now, __u64 interval, __u64 burst)
{
	int i;

#pragma unroll
	for (i = 0; i < 2; i++) {
		__u64 old = *(volatile __u64 *)tat;
		__u64 t = old > now ? old : now;

		if (t - now + interval > burst)
			return 0;
		if (__sync_val_compare_and_swap(tat, old, t + interval) == old)
			return 1;
	}
	return 0;
}

static __always_inline int icmp_allowed(void)
{
	__u32 zero = 0;
	__u64 *tat = bpf_map_lookup_elem(&icmp_budget, &zero);

	return tat && gcra_take(tat, bpf_ktime_get_ns(), ICMP_INTERVAL_NS, ICMP_BURST_NS);
}

#endif
