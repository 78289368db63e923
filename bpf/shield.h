/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The SYN-flood shield: in front of a protected service (a VIP, or a local
 * port in standalone mode).
 *
 *   deny / allow prefixes (LPM tries, only looked up when non-empty)
 *   layer 1: per-source token bucket (GCRA: one u64 per source); in
 *            attack mode only sources that already have one are charged
 *   layer 2: in attack mode, a SYN from an unproven source is answered at
 *            XDP with a SYN-ACK whose acknowledgement is ISN - k (1 <= k <=
 *            32768, random). The client's stack answers with an RST whose
 *            sequence number is that acknowledgement (RFC 793, SYN-SENT) and
 *            resends the same SYN ~10 ms later (Linux >= 5.6). A matching RST
 *            proves the source for a TTL. ISN - k, not ISN + x: the latter is
 *            dropped by a Linux conntrack (ct state invalid drop) or NAT in
 *            front of clients, while ISN - k with 1 <= k <= 32768 passes
 *            them (checked with curl and Python clients).
 *   layer 3: (load balancer) in attack mode, TCP that is not a SYN and
 *            matches no tracked flow is dropped; new flows are rate-guarded.
 */
#ifndef WEIR_SHIELD_H
#define WEIR_SHIELD_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"
#include "parse.h"
#include "stats.h"
#include "csum.h"
#include "compiler.h"
#include "ratelimit.h"
#include "shield_maps.h"

#define SHIELD_CONTINUE (-1)



static __always_inline int lpm_match(void *v4, void *v6, const struct flow_key *k)
{
	if (k->family == WEIR_FAMILY_V4) {
		struct lpm_v4 key = { .prefixlen = 32, .addr = k->src[0] };

		return bpf_map_lookup_elem(v4, &key) != NULL;
	} else {
		struct lpm_v6 key = { .prefixlen = 128 };

		__builtin_memcpy(key.addr, k->src, sizeof(key.addr));
		return bpf_map_lookup_elem(v6, &key) != NULL;
	}
}

/*
 * Count one attempt at new state (a SYN, or in the balancer a TCP segment of
 * no tracked flow) and update attack mode. Windows are 100 ms so a flood is
 * noticed fast; within a window, attack mode starts as soon as the count
 * passes attack_on / 10, so at most that many flood packets reach a backend
 * before it does. It ends when a closed window's rate is below attack_off.
 */
#define SHIELD_WINDOW_NS (NSEC_PER_SEC / 10)

static __always_inline struct shield_state *syn_rate(__u32 pid, const struct shield_policy *pol, __u64 now)
{
	struct shield_state *st = bpf_map_lookup_elem(&shield_state, &pid);
	__u64 win, n;
	__s64 elapsed;

	if (!st)
		return NULL;
	n = __sync_fetch_and_add(&st->syns, 1) + 1;
	win = READ_ONCE(st->window_ns);
	/*
	 * Signed: `now` was read before another CPU may have closed the window
	 * with a later timestamp; that window is still open for us, not 2^64 ns
	 * old (an unsigned difference made the rate 0 and ended attack mode
	 * mid-flood).
	 */
	elapsed = (__s64)(now - win);
	if (elapsed >= (__s64)SHIELD_WINDOW_NS) {
		/* One CPU closes the window: the one that moves its start. It
		 * takes the window's count whole, so no SYN is counted twice or
		 * lost between two CPUs closing it at once. */
		if (__sync_val_compare_and_swap(&st->window_ns, win, now) == win) {
			__u64 total = __sync_lock_test_and_set(&st->syns, 0);
			__u64 rate = total * NSEC_PER_SEC / (__u64)elapsed;

			st->last_rate = rate;
			if (pol->attack_mode == WEIR_ATTACK_AUTO)
				st->attack = st->attack ? rate >= pol->attack_off : rate > pol->attack_on;
		}
	} else if (pol->attack_mode == WEIR_ATTACK_AUTO && !st->attack &&
		   n * (NSEC_PER_SEC / SHIELD_WINDOW_NS) > pol->attack_on) {
		st->attack = 1;
	}
	if (pol->attack_mode == WEIR_ATTACK_ON)
		st->attack = 1;
	else if (pol->attack_mode == WEIR_ATTACK_OFF)
		st->attack = 0;
	return st;
}

/* A TCP segment that is not a SYN and matches no tracked flow: counts
 * toward attack mode (ACK floods raise it too); true when in attack mode. */
static __always_inline int shield_untracked(__u32 pid, int *dry)
{
	struct shield_policy *pol = bpf_map_lookup_elem(&shield_pol, &pid);
	struct shield_state *st;

	if (!pol || !pol->enabled)
		return 0;
	*dry = pol->flags & WEIR_SHIELD_DRY_RUN;
	st = syn_rate(pid, pol, bpf_ktime_get_ns());
	return st && st->attack;
}

/* GCRA: allow when the theoretical arrival time is within the burst. */
static __always_inline int bucket_take(__u32 pid, const struct shield_policy *pol,
				       const struct flow_key *k, __u64 now, int create)
{
	struct src_key sk = { .policy = pid, .family = k->family };
	__u64 *tat, t;

	__builtin_memcpy(sk.addr, k->src, sizeof(sk.addr));
	if (pol->flags & WEIR_SHIELD_AGGREGATE) {
		if (k->family == WEIR_FAMILY_V4) {
			sk.addr[0] &= bpf_htonl(0xffffff00);
		} else {
			sk.addr[2] = 0;
			sk.addr[3] = 0;
		}
	}
	tat = bpf_map_lookup_elem(&syn_bucket, &sk);
	if (!tat) {
		if (!create)
			return 1;
		t = now + pol->interval_ns;
		bpf_map_update_elem(&syn_bucket, &sk, &t, BPF_ANY);
		return 1;
	}
	return gcra_take_shared(tat, now, pol->interval_ns, pol->burst_ns);
}

static __always_inline int is_verified(const struct flow_key *k, __u64 now)
{
	struct src_key sk = { .family = k->family };
	__u64 *until;

	__builtin_memcpy(sk.addr, k->src, sizeof(sk.addr));
	until = bpf_map_lookup_elem(&syn_verified, &sk);
	return until && *until > now;
}

/*
 * Turn the SYN into the challenge SYN-ACK, in its own frame (growing an
 * skb-backed veth frame fails): swap addresses and ports, drop the
 * SYN's options and payload, fresh checksums.
 */
/*
 * Every checksum below is summed from values held in registers (what was
 * written, and the parsed addresses), never by re-reading the packet: a
 * re-read pointer rebuilt from a spilled offset loses the verifier's range
 * (seen on this kernel whenever the surrounding code grew).
 */
static __always_inline int send_challenge(struct xdp_md *ctx, struct packet *pkt, __u64 now)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l3 = pkt->l3_off, l4 = pkt->l4_off;
	struct challenge ch = { .sent_ns = now };
	__u8 mac[ETH_ALEN];
	struct tcphdr *th;
	__u32 sum, isn, seq, addrs = 0;
	__u16 sport, dport;
	int i;

	if ((void *)(eth + 1) > data_end || l3 > 18 || l4 > 18 + 40)
		return XDP_DROP;
	th = data + l4;
	if ((void *)(th + 1) > data_end)
		return XDP_DROP;

	isn = bpf_ntohl(th->seq);
	ch.expect_seq = isn - ((bpf_get_prandom_u32() & 0x7fff) + 1);
	seq = bpf_htonl(bpf_get_prandom_u32());
	sport = th->dest;
	dport = th->source;
	th->source = sport;
	th->dest = dport;
	th->seq = seq;
	th->ack_seq = bpf_htonl(ch.expect_seq);
	((__u8 *)th)[12] = 5 << 4; /* data offset 5: no options */
	((__u8 *)th)[13] = TCP_SYN | TCP_ACK;
	th->window = bpf_htons(65535);
	th->check = 0;
	th->urg_ptr = 0;

	/* Both addresses: their sum does not depend on which is the source. */
#pragma unroll
	for (i = 0; i < 4; i++)
		addrs += csum_u32(pkt->key.src[i]) + csum_u32(pkt->key.dst[i]);

	if (pkt->key.family == WEIR_FAMILY_V4) {
		struct iphdr *iph = data + l3;

		if ((void *)(iph + 1) > data_end)
			return XDP_DROP;
		iph->saddr = pkt->key.dst[0];
		iph->daddr = pkt->key.src[0];
		iph->tos = 0;
		iph->tot_len = bpf_htons(sizeof(*iph) + sizeof(*th));
		iph->id = 0;
		iph->frag_off = bpf_htons(0x4000); /* DF */
		iph->ttl = 64;
		/* version 4, IHL 5 (no options: checked by the caller) */
		iph->check = csum_fold(bpf_htons(0x4500) + bpf_htons(sizeof(*iph) + sizeof(*th)) +
				       bpf_htons(0x4000) + bpf_htons((64 << 8) | IPPROTO_TCP) + addrs);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		struct in6_addr a;

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->payload_len = bpf_htons(sizeof(*th));
		ip6->hop_limit = 64;
	}
	/* Pseudo-header, then the 20 bytes just written. */
	sum = addrs + bpf_htons(IPPROTO_TCP) + bpf_htons(sizeof(*th));
	sum += sport + dport + csum_u32(seq) + csum_u32(bpf_htonl(ch.expect_seq));
	sum += bpf_htons(((5 << 4) << 8) | TCP_SYN | TCP_ACK) + bpf_htons(65535);
	th->check = csum_fold(sum);

	__builtin_memcpy(mac, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, mac, ETH_ALEN);

	bpf_map_update_elem(&syn_challenge, &pkt->key, &ch, BPF_ANY);
	{
		int delta = (int)(l4 + sizeof(*th)) - (int)(data_end - data);

		if (delta < 0 && bpf_xdp_adjust_tail(ctx, delta))
			return XDP_DROP;
	}
	return XDP_TX;
}

static __always_inline void proof_failed(__u32 pid, __u64 now)
{
	__u64 *tat = bpf_map_lookup_elem(&proof_fail, &pid);

	if (tat)
		gcra_take(tat, now, PROOF_FAIL_INTERVAL_NS, PROOF_FAIL_BURST_NS);
}

/* True while this CPU's failed-proof budget of service `pid` is spent. */
static __always_inline int proofs_strict(__u32 pid, __u64 now)
{
	__u64 *tat = bpf_map_lookup_elem(&proof_fail, &pid);

	return tat && gcra_spent(*tat, now, PROOF_FAIL_INTERVAL_NS, PROOF_FAIL_BURST_NS);
}

/* A correct answer to a challenge: the source is proven for verified_ttl,
 * or, while proofs are strict, once (it must answer the next one too). */
static __always_inline int prove(struct stat_block *c, const struct shield_policy *pol, __u32 pid,
				 const struct flow_key *k, __u64 now)
{
	struct src_key sk = { .family = k->family };
	__u64 until = now + pol->verified_ttl_ns, *seen;

	__builtin_memcpy(sk.addr, k->src, sizeof(sk.addr));
	if (proofs_strict(pid, now)) {
		seen = bpf_map_lookup_elem(&syn_verified, &sk);
		if (!seen || *seen != PROVEN_ONCE) {
			__u64 once = PROVEN_ONCE;

			bpf_map_update_elem(&syn_verified, &sk, &once, BPF_ANY);
			stat_inc(c, WEIR_STAT_SHIELD_PROOF_STRICT);
			return verdict(c, XDP_DROP);
		}
	}
	bpf_map_update_elem(&syn_verified, &sk, &until, BPF_ANY);
	stat_inc(c, WEIR_STAT_SHIELD_PROVEN);
	return verdict(c, XDP_DROP);
}

/*
 * The shield's verdict on a TCP packet to service `pid`: SHIELD_CONTINUE, or
 * the XDP action to return. With dry_run, verdict counters still count what
 * would have happened, plus shield_dry_run, and the packet goes on.
 */
static __always_inline int shield_tcp(struct stat_block *c, struct xdp_md *ctx, struct packet *pkt, __u32 pid)
{
	__u8 fl = pkt->tcp_flags;
	int is_syn = (fl & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	int is_rst = (fl & (TCP_RST | TCP_ACK)) == TCP_RST;
	struct shield_policy *pol;
	struct shield_state *st;
	__u64 now;
	int dry;

	/* Established traffic (most packets) has nothing to check without
	 * prefix lists: no policy lookup, no clock read. */
	if (!is_syn && !is_rst && !has_deny && !has_allow)
		return SHIELD_CONTINUE;
	pol = bpf_map_lookup_elem(&shield_pol, &pid);
	if (!pol || !pol->enabled)
		return SHIELD_CONTINUE;
	dry = pol->flags & WEIR_SHIELD_DRY_RUN;
	if (has_deny && lpm_match(&deny_v4, &deny_v6, &pkt->key)) {
		if (!dry)
			return drop_because(c, WEIR_STAT_SHIELD_DENIED);
		stat_inc(c, WEIR_STAT_SHIELD_DENIED);
		stat_inc(c, WEIR_STAT_SHIELD_DRY_RUN);
		return SHIELD_CONTINUE;
	}
	if (has_allow && lpm_match(&allow_v4, &allow_v6, &pkt->key)) {
		stat_inc(c, WEIR_STAT_SHIELD_ALLOWED);
		return SHIELD_CONTINUE;
	}

	if (!is_syn && !is_rst)
		return SHIELD_CONTINUE;
	now = bpf_ktime_get_ns();
	if (is_rst) {
		struct challenge *ch = bpf_map_lookup_elem(&syn_challenge, &pkt->key);

		if (!ch)
			return SHIELD_CONTINUE;
		/* A source's proofs cost it a token like its SYNs do (if it has
		 * a bucket): one source cannot try k faster than it may open. */
		if (!bucket_take(pid, pol, &pkt->key, now, 0))
			return drop_because(c, WEIR_STAT_SHIELD_BUCKET_EMPTY);
		/* One answer per challenge: guessing k costs 32768 SYN+RST pairs. */
		if (ch->expect_seq == bpf_ntohl(pkt->tcp_seq)) {
			bpf_map_delete_elem(&syn_challenge, &pkt->key);
			return prove(c, pol, pid, &pkt->key, now);
		}
		bpf_map_delete_elem(&syn_challenge, &pkt->key);
		proof_failed(pid, now);
		return drop_because(c, WEIR_STAT_SHIELD_PROOF_FAILED);
	}
	st = syn_rate(pid, pol, now);
	if (st && st->attack && !is_verified(&pkt->key, now)) {
		/*
		 * Unproven source in attack mode: charge its bucket if it has one
		 * (a one-source flood stays a cheap drop) but create none: under a
		 * random-source flood new buckets would only churn the table and
		 * cost an LRU insert per packet. Then challenge.
		 */
		if (!bucket_take(pid, pol, &pkt->key, now, 0)) {
			if (!dry)
				return drop_because(c, WEIR_STAT_SHIELD_BUCKET_EMPTY);
			stat_inc(c, WEIR_STAT_SHIELD_BUCKET_EMPTY);
			stat_inc(c, WEIR_STAT_SHIELD_DRY_RUN);
			return SHIELD_CONTINUE;
		}
		if (dry) {
			stat_inc(c, WEIR_STAT_SHIELD_CHALLENGED);
			stat_inc(c, WEIR_STAT_SHIELD_DRY_RUN);
			return SHIELD_CONTINUE;
		}
		if (pkt->ip_opts)
			return drop_because(c, WEIR_STAT_SHIELD_NO_CHALLENGE);
		stat_inc(c, WEIR_STAT_SHIELD_CHALLENGED);
		return verdict(c, send_challenge(ctx, pkt, now));
	}
	if (!bucket_take(pid, pol, &pkt->key, now, 1)) {
		if (!dry)
			return drop_because(c, WEIR_STAT_SHIELD_BUCKET_EMPTY);
		stat_inc(c, WEIR_STAT_SHIELD_BUCKET_EMPTY);
		stat_inc(c, WEIR_STAT_SHIELD_DRY_RUN);
		return SHIELD_CONTINUE;
	}
	if (st && st->attack)
		stat_inc(c, WEIR_STAT_SHIELD_VERIFIED_PASS);
	return SHIELD_CONTINUE;
}

/* Layer 3's new-flow guard: a global GCRA on flow-table inserts. */
static __always_inline int flow_guard_take(void)
{
	__u32 zero = 0;
	__u64 *tat;

	if (!guard_interval_ns)
		return 1;
	tat = bpf_map_lookup_elem(&flow_guard, &zero);
	return !tat || gcra_take(tat, bpf_ktime_get_ns(), guard_interval_ns, guard_burst_ns);
}

#endif
