/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `weir trace`: sampled packet events through a ring buffer. Off the hot
 * path when nobody traces: trace_every lives in .bss (a plain load, no
 * helper), and is 0 unless a `weir trace` client is connected.
 */
#ifndef WEIR_TRACE_H
#define WEIR_TRACE_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"

/* 0: off; N: one packet in N (random sampling). Written by the control plane. */
__u32 trace_every = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} trace_rb SEC(".maps");

/* The current packet's pass/drop reason, noted only while tracing. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} trace_reason SEC(".maps");

static __always_inline void trace_note_reason(__u32 reason)
{
	__u32 zero = 0;
	__u32 *r;

	if (!trace_every)
		return;
	r = bpf_map_lookup_elem(&trace_reason, &zero);
	if (r)
		*r = reason;
}

static __always_inline void trace_emit(const struct flow_key *key, __u8 tcp_flags, int action,
				       __u32 backend_id, __u32 vip_id, __u32 len)
{
	__u32 zero = 0, *r;
	struct trace_event *e;
	__u32 reason = 0;

	r = bpf_map_lookup_elem(&trace_reason, &zero);
	if (r) {
		reason = *r;
		*r = 0;
	}
	if (trace_every > 1 && bpf_get_prandom_u32() % trace_every)
		return;
	e = bpf_ringbuf_reserve(&trace_rb, sizeof(*e), 0);
	if (!e)
		return;
	e->key = *key;
	e->ts_ns = bpf_ktime_get_ns();
	e->backend_id = backend_id;
	e->vip_id = vip_id;
	e->len = len;
	e->reason = reason;
	e->action = action;
	e->tcp_flags = tcp_flags;
	bpf_ringbuf_submit(e, 0);
}

#endif
