/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Budgets for what the data plane sends on its own (ICMP too-big answers):
 * a GCRA per CPU, so no CPU ever writes a line another CPU reads. The
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

static __always_inline int icmp_allowed(void)
{
	__u32 zero = 0;
	__u64 *tat = bpf_map_lookup_elem(&icmp_budget, &zero);

	return tat && gcra_take(tat, bpf_ktime_get_ns(), ICMP_INTERVAL_NS, ICMP_BURST_NS);
}

#endif
