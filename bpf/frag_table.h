/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The datagram table of IP fragments (frag.h says how fragments are
 * placed). One entry per datagram in flight, keyed like the kernel's
 * reassembly queue: (source, destination, protocol, identification).
 *
 * Several CPUs write it (fragments of one datagram may arrive on different
 * queues), so an entry is only ever made with BPF_NOEXIST, never written
 * over while live, and reused or freed only through a compare-and-swap of
 * its stamp (WEIR_FRAG_BUSY marks one being reused or freed): the rules of
 * the NAT reverse table (nat.h). The two-CPU test in tests/races.rs holds
 * it to that.
 */
#ifndef WEIR_FRAG_TABLE_H
#define WEIR_FRAG_TABLE_H

#include "maps.h"
#include "parse.h"
#include "stats.h"
#include "compiler.h"

#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

/* Milliseconds of a coarse monotonic clock, never WEIR_FRAG_BUSY. */
static __always_inline __u32 frag_now(void)
{
	__u32 t = bpf_ktime_get_ns() / 1000000;

	return t == WEIR_FRAG_BUSY ? t - 1 : t;
}

/* Compared signed: the clock wraps every 49 days. */
static __always_inline int frag_live(__u32 stamp, __u32 now)
{
	return stamp != WEIR_FRAG_BUSY && (__s32)(now - stamp) < (__s32)frag_timeout_ms;
}

static __always_inline void frag_key_of(struct frag_key *fk, const struct packet *pkt)
{
	__builtin_memcpy(fk->src, pkt->key.src, sizeof(fk->src));
	__builtin_memcpy(fk->dst, pkt->key.dst, sizeof(fk->dst));
	fk->id = pkt->frag_id;
	fk->proto = pkt->key.proto;
	fk->family = pkt->key.family;
	fk->pad = 0;
}

#define FRAG_FOUND 1
#define FRAG_NONE_YET 0
#define FRAG_BUSY (-1)
#define FRAG_FULL (-2)
/* The entry is another datagram's: same (src, dst, proto, ID) to another
 * VIP port (an ID clash; the receiver could not reassemble either). */
#define FRAG_OTHER (-3)

/*
 * The datagram's live entry, copied to *out: FRAG_FOUND, FRAG_NONE_YET (none,
 * or expired), or FRAG_BUSY (being reused or freed by another CPU: the
 * fragment cannot be placed without guessing). The stamp is read before and
 * after the copy: a copy torn by a reuse is never believed.
 */
static __always_inline int frag_read(const struct frag_key *fk, __u32 now, struct frag_entry *out)
{
	struct frag_entry *e = bpf_map_lookup_elem(&frags, fk);
	__u32 s1, s2;

	if (!e)
		return FRAG_NONE_YET;
	s1 = READ_ONCE(e->stamp);
	if (s1 == WEIR_FRAG_BUSY)
		return FRAG_BUSY;
	if (!frag_live(s1, now))
		return FRAG_NONE_YET;
	barrier();
	out->backend_id = e->backend_id;
	out->generation = e->generation;
	out->vip_port = e->vip_port;
	out->reply_dport = e->reply_dport;
	out->vip_proto = e->vip_proto;
	out->flags = e->flags;
	barrier();
	s2 = READ_ONCE(e->stamp);
	out->stamp = s1;
	return s1 == s2 ? FRAG_FOUND : FRAG_BUSY;
}

/*
 * Make the datagram's entry `want`, or learn the one an earlier fragment (on
 * this or another CPU) made: *out is the entry to follow. FRAG_FOUND when
 * `want` was made, FRAG_NONE_YET when another entry is followed, FRAG_FULL
 * (no room) or FRAG_BUSY: the fragment is dropped, never guessed.
 */
static __always_inline int frag_bind(struct stat_block *c, const struct frag_key *fk, const struct frag_entry *want,
				     __u32 now, struct frag_entry *out)
{
	struct frag_entry *e;
	__u32 st;
	int rc;

	if (!bpf_map_update_elem(&frags, fk, want, BPF_NOEXIST)) {
		*out = *want;
		return FRAG_FOUND;
	}
	rc = frag_read(fk, now, out);
	if (rc == FRAG_FOUND)
		return FRAG_NONE_YET;
	if (rc == FRAG_BUSY)
		return FRAG_BUSY;
	e = bpf_map_lookup_elem(&frags, fk);
	if (!e)
		return FRAG_FULL; /* the insert failed for room (or it was freed meanwhile) */
	st = READ_ONCE(e->stamp);
	if (st == WEIR_FRAG_BUSY || frag_live(st, now))
		return FRAG_BUSY;
	/* Expired (an earlier datagram with the same identification): reuse
	 * it in place, never delete and re-insert (a delete could remove what
	 * another CPU has just made). */
	if (__sync_val_compare_and_swap(&e->stamp, st, WEIR_FRAG_BUSY) != st)
		return FRAG_BUSY;
	stat_inc(c, WEIR_STAT_FRAG_EXPIRED);
	e->backend_id = want->backend_id;
	e->generation = want->generation;
	e->vip_port = want->vip_port;
	e->reply_dport = want->reply_dport;
	e->vip_proto = want->vip_proto;
	e->flags = want->flags;
	/* Publish: an atomic exchange, ordered after the writes above. */
	__sync_lock_test_and_set(&e->stamp, want->stamp);
	*out = *want;
	return FRAG_FOUND;
}

/* The drop reason for a frag_bind / frag_read failure. */
static __always_inline __u32 frag_fail_reason(int rc)
{
	return rc == FRAG_FULL ? WEIR_STAT_DROP_FRAG_TABLE_FULL : WEIR_STAT_DROP_FRAG_UNRESOLVED;
}

/*
 * A first fragment (it has ports): the entry a later fragment made, if one
 * arrived first. FRAG_FOUND (*be_out / *bid_out set), FRAG_NONE_YET, or a
 * failure.
 */
static __always_inline int frag_first_follow(const struct packet *pkt, __u32 now, struct backend **be_out,
					     __u32 *bid_out)
{
	struct frag_key fk = {};
	struct frag_entry e = {};
	struct backend *be;
	__u32 bid;
	int rc;

	frag_key_of(&fk, pkt);
	rc = frag_read(&fk, now, &e);
	if (rc != FRAG_FOUND)
		return rc;
	/* Its VIP: the port a first fragment recorded, or 0 for one placed
	 * early for the address's only VIP of the protocol (frag_vips). */
	if (e.vip_proto != pkt->key.proto || (e.vip_port != pkt->key.dport && e.vip_port != 0))
		return FRAG_OTHER;
	bid = e.backend_id;
	be = bpf_map_lookup_elem(&backends, &bid);
	if (!be || !(be->flags & WEIR_BACKEND_ACTIVE) || be->generation != e.generation)
		return FRAG_BUSY; /* its backend left: the datagram cannot be whole */
	*be_out = be;
	*bid_out = bid;
	return FRAG_FOUND;
}

/*
 * A first fragment about to go to *bid_out: make its datagram's entry, or
 * follow the one a fragment on another CPU made meanwhile (NAT: a flow is
 * bound to its backend, so another backend drops the fragment). 0, or the
 * drop reason.
 */
static __always_inline __u32 frag_first_bind(struct stat_block *c, const struct packet *pkt, __u32 now,
					     struct backend **be_out, __u32 *bid_out, int nat)
{
	struct frag_key fk = {};
	struct frag_entry e = {};
	struct frag_entry want = {
		.backend_id = *bid_out,
		.generation = (*be_out)->generation,
		.vip_port = pkt->key.dport,
		.vip_proto = pkt->key.proto,
		.stamp = now,
	};
	struct backend *be;
	__u32 bid;
	int rc;

	frag_key_of(&fk, pkt);
	rc = frag_bind(c, &fk, &want, now, &e);
	if (rc < 0)
		return frag_fail_reason(rc);
	if (rc == FRAG_FOUND) {
		stat_inc(c, WEIR_STAT_FRAG_TRACKED);
		return 0;
	}
	if (e.backend_id == *bid_out)
		return 0;
	if (nat)
		return WEIR_STAT_DROP_FRAG_SPLIT;
	bid = e.backend_id;
	be = bpf_map_lookup_elem(&backends, &bid);
	if (!be || !(be->flags & WEIR_BACKEND_ACTIVE) || be->generation != e.generation)
		return WEIR_STAT_DROP_FRAG_BACKEND_GONE;
	*be_out = be;
	*bid_out = bid;
	return 0;
}

#endif
