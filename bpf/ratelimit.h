/* SPDX-License-Identifier: GPL-2.0 */
/*
 * GCRA (the generic cell rate algorithm: one u64, the theoretical arrival
 * time, per budget): per-CPU budgets take gcra_take, budgets that several
 * CPUs share take gcra_take_shared.
 */
#ifndef WEIR_RATELIMIT_H
#define WEIR_RATELIMIT_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* True when a budget whose arrival time is `tat` has nothing left now. */
static __always_inline int gcra_spent(__u64 tat, __u64 now, __u64 interval, __u64 burst)
{
	__u64 t = tat > now ? tat : now;

	return t - now + interval > burst;
}

/* GCRA on one per-CPU slot: true when one more may be sent now. */
static __always_inline int gcra_take(__u64 *tat, __u64 now, __u64 interval, __u64 burst)
{
	if (gcra_spent(*tat, now, interval, burst))
		return 0;
	*tat = (*tat > now ? *tat : now) + interval;
	return 1;
}

/*
 * gcra_take on the single slot of a BPF_PERCPU_ARRAY of one u64 (the
 * budgets icmp_budget and sync_budget): true when one more may go now.
 */
static __always_inline int percpu_budget_take(void *budget, __u64 interval, __u64 burst)
{
	__u32 zero = 0;
	__u64 *tat = bpf_map_lookup_elem(budget, &zero);

	return tat && gcra_take(tat, bpf_ktime_get_ns(), interval, burst);
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

		if (gcra_spent(old, now, interval, burst))
			return 0;
		if (__sync_val_compare_and_swap(tat, old, (old > now ? old : now) + interval) == old)
			return 1;
	}
	return 0;
}

#endif
