/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every map and setting of the SYN-flood shield. Shared by both programs
 * that carry the shield: the load balancer (lb.bpf.c) and the standalone
 * shield (shield.bpf.c); the logic is in shield.h.
 */
#ifndef WEIR_SHIELD_MAPS_H
#define WEIR_SHIELD_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "weir.h"

#define NSEC_PER_SEC 1000000000ULL

/* Set by the control plane before load. */
const volatile __u32 shield_on = 0;
const volatile __u32 has_deny = 0;
const volatile __u32 has_allow = 0;
/* New-flow guard (GCRA): 0 = off. */
const volatile __u64 guard_interval_ns = 0;
const volatile __u64 guard_burst_ns = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct shield_policy);
	__uint(max_entries, WEIR_MAX_VIPS);
} shield_pol SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct shield_state);
	__uint(max_entries, WEIR_MAX_VIPS);
} shield_state SEC(".maps");

/* Sizes below are defaults; the control plane sets them before load. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct src_key);
	__type(value, __u64); /* theoretical arrival time (GCRA) */
	__uint(max_entries, 65536);
} syn_bucket SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct src_key);
	__type(value, __u64); /* proven until (ns) */
	__uint(max_entries, 65536);
} syn_verified SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct challenge);
	__uint(max_entries, 262144);
} syn_challenge SEC(".maps");

/*
 * The new-flow guard's GCRA, one per CPU: each CPU admits its share of
 * max_new_flows (the control plane sets guard_interval_ns = N_CPU / rate),
 * so the total is exact and no CPU writes a line another reads. (A shared
 * slot updated without atomics admitted up to N_CPU x the rate.)
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} flow_guard SEC(".maps");

/*
 * Failed proofs per service, per CPU (a GCRA of PROOF_FAIL_RATE per second
 * per CPU, burst PROOF_FAIL_BURST). Legitimate clients never fail a proof:
 * failures mean someone is guessing k. While a service's budget is spent,
 * one correct answer is not enough: the source must answer a second
 * challenge too (strict proofs), so a guesser needs 1 / 2^30 luck instead of
 * 1 / 2^15, and an honest Linux client pays one more ~10 ms round.
 */
#define PROOF_FAIL_INTERVAL_NS (NSEC_PER_SEC / 100)
#define PROOF_FAIL_BURST_NS (100 * PROOF_FAIL_INTERVAL_NS)

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, WEIR_MAX_VIPS);
} proof_fail SEC(".maps");

/* syn_verified value of a source that answered one challenge in strict
 * mode: a time long past (not verified), but remembered. */
#define PROVEN_ONCE 1ULL

#define LPM_MAP(name, keytype)                           \
	struct {                                         \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);     \
		__type(key, keytype);                    \
		__type(value, __u32);                    \
		__uint(max_entries, 4096);               \
		__uint(map_flags, BPF_F_NO_PREALLOC);    \
	} name SEC(".maps")

LPM_MAP(deny_v4, struct lpm_v4);
LPM_MAP(deny_v6, struct lpm_v6);
LPM_MAP(allow_v4, struct lpm_v4);
LPM_MAP(allow_v6, struct lpm_v6);

#endif
