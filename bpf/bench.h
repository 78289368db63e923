/* SPDX-License-Identifier: GPL-2.0 */
/*
 * `weir bench`'s in-kernel harness (struct bench_scratch in weir.h).
 *
 * BPF_PROG_TEST_RUN with repeat = N calls the program N times on one
 * buffer and resets neither its bytes nor its start and length: run 2 of a
 * NAT forward would see run 1's rewritten frame, a tunnel's would be
 * encapsulated twice. bench_prepare, before each run, moves the start back
 * to where run 0 had it (data pointers of the two runs compared as numbers:
 * only a privileged loader may read them so, and only the bench loads
 * this), restores the length and the bytes, and optionally makes run i a
 * new client (a new flow per run). With live frames
 * (BPF_F_TEST_XDP_LIVE_FRAMES) the kernel resets start and length of each
 * recycled page itself but not its bytes: there only the bytes are put
 * back. The rewritten frame of the last run is what test_run returns.
 *
 * The programs weir_lb_bench (the production path, inlined from the same
 * source as weir_lb) and weir_bench_base (the harness around XDP_PASS: its
 * cost is subtracted) are loaded only by `weir bench` (dataplane::size).
 */
#ifndef WEIR_BENCH_H
#define WEIR_BENCH_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "weir.h"
#include "compiler.h"

/*
 * One value, not one per CPU: the harness runs from one bench thread at a
 * time, and the production program never touches it (~300 bytes).
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct bench_scratch);
	__uint(max_entries, 1);
} bench_scratch SEC(".maps");

/* 0: the frame is the original again (run i's client when vary); -1: the
 * harness could not (an error of the bench's, XDP_ABORTED). */
static __always_inline int bench_prepare(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct bench_scratch *s = bpf_map_lookup_elem(&bench_scratch, &zero);
	void *data, *data_end;
	__u32 len, i, shift;
	long moved;
	__u64 cur;

	if (!s)
		return -1;
	len = s->len;
	if (len < 38 || len > WEIR_BENCH_FRAME_MAX)
		return -1;
	if (!s->live) {
		if (s->iter == 0)
			s->first_data = (__u64)(long)ctx->data;
		s->cur_data = (__u64)(long)ctx->data;
		/* Both read back from the map: numbers, not packet pointers. */
		moved = (long)(READ_ONCE(s->cur_data) - READ_ONCE(s->first_data));
		if (moved < -256 || moved > 256)
			return -1;
		if (bpf_xdp_adjust_head(ctx, (int)-moved))
			return -1;
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		cur = data_end - data;
		/* A number from here on: clang must not fold it into 32-bit
		 * arithmetic on the pointers, which the verifier refuses. */
		asm volatile("" : "+r"(cur));
		if (bpf_xdp_adjust_tail(ctx, (int)len - (int)cur))
			return -1;
	}
	if (bpf_xdp_store_bytes(ctx, 0, s->frame, len))
		return -1;
	if (s->vary) {
		/* Ethernet + IPv4 (20 bytes) + ports: source at 26, port at 34. */
		__u32 ip;
		__u16 port;

		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		if (data + 38 > data_end)
			return -1;
		i = s->iter + s->vary_from;
		if (s->vary_mod)
			i %= s->vary_mod;
		shift = s->vary_shift & 31;
		__builtin_memcpy(&ip, s->frame + 26, 4);
		__builtin_memcpy(&port, s->frame + 34, 2);
		ip = bpf_htonl(bpf_ntohl(ip) + (i >> shift));
		port = bpf_htons(bpf_ntohs(port) + (__u16)(i & ((1u << shift) - 1)));
		__builtin_memcpy(data + 26, &ip, 4);
		__builtin_memcpy(data + 34, &port, 2);
	}
	s->iter++;
	return 0;
}

SEC("xdp")
int weir_bench_base(struct xdp_md *ctx)
{
	if (bench_prepare(ctx))
		return XDP_ABORTED;
	return XDP_PASS;
}

#endif /* WEIR_BENCH_H */
