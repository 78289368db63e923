/* SPDX-License-Identifier: GPL-2.0 */
/* Internet checksum (RFC 1071) over small, fixed-size headers. */
#ifndef WEIR_CSUM_H
#define WEIR_CSUM_H

#include <linux/types.h>

static __always_inline __u16 csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Sum of `words` 16-bit words; the caller has bounds-checked them. */
static __always_inline __u32 csum_words(const void *p, const int words)
{
	const __u16 *w = p;
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < words; i++)
		sum += w[i];
	return sum;
}

/* A 32-bit value (an address word) as two 16-bit words of a sum. */
static __always_inline __u32 csum_u32(__u32 v)
{
	return (v & 0xffff) + (v >> 16);
}

/* An address (1 word for IPv4, 4 for IPv6) as 16-bit words of a sum. */
static __always_inline __u32 csum_addr(const __u32 *a, int v4)
{
	__u32 s = 0;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		if (i == 0 || !v4)
			s += csum_u32(a[i]);
	return s;
}

/*
 * Incremental updates (RFC 1624, eqn. 3: HC' = ~(~HC + ~m + m')). Changes
 * are summed into an accumulator, then applied to a checksum field once.
 * Words are taken in memory order throughout, like the field itself.
 */
static __always_inline __u32 csum_diff32(__u32 acc, __u32 from, __u32 to)
{
	__u32 nf = ~from;

	return acc + (nf & 0xffff) + (nf >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_diff16(__u32 acc, __u16 from, __u16 to)
{
	return acc + (__u16)~from + to;
}

/* An address that changes from `from` to `to` (1 word for IPv4, 4 for IPv6). */
static __always_inline __u32 csum_diff_addr(__u32 acc, const __u32 *from, const __u32 *to, int v4)
{
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		if (i == 0 || !v4)
			acc = csum_diff32(acc, from[i], to[i]);
	return acc;
}

static __always_inline __u16 csum_apply(__u16 check, __u32 acc)
{
	return csum_fold((__u16)~check + acc);
}

#endif
