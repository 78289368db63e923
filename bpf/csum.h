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

#endif
